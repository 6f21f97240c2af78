//! What happened in one schedule, as the store layer ([`Ledger`](super::ledger::Ledger)),
//! the callers' views ([`Tap`](super::tap::Tap)) and the bodies record it; the invariants
//! are checked against it, and each check is counted in a [`Tally`].

use idem::Fingerprint;
use idem::store::{KeyDigest, Output, Token};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// What a body returns: who it was, so that a replay can be traced to its execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Out {
    pub key: u8,
    pub scope: u8,
    pub payload: u8,
    pub exec: u32,
}

/// A body's error (a declined charge is cached under `errors = cache`/`cache_if`, a
/// transient one only under `cache`), or idem's error by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimError {
    Declined(Out),
    Transient(Out),
    Idem(IdemKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdemKind {
    PayloadMismatch,
    InProgress,
    WaitTimeout,
    Store,
    Other,
}

impl From<idem::Error> for SimError {
    fn from(e: idem::Error) -> Self {
        SimError::Idem(match e {
            idem::Error::PayloadMismatch => IdemKind::PayloadMismatch,
            idem::Error::InProgress => IdemKind::InProgress,
            idem::Error::WaitTimeout => IdemKind::WaitTimeout,
            idem::Error::Store(_) => IdemKind::Store,
            _ => IdemKind::Other,
        })
    }
}

/// A claim of one key: tokens are only unique per key in some stores.
pub type TokenId = (KeyDigest, u64);

pub fn token_id(key: &KeyDigest, token: Token) -> TokenId {
    (*key, token.get())
}

/// What the store's answer to a caller's last claim was, as the caller saw it.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Claimed(Token),
    Completed(Fingerprint),
    InProgress(Fingerprint),
    Failed,
}

/// The model of one key: what the store must hold, from the answers it gave.
#[derive(Default, Debug)]
pub struct KeyModel {
    pub holder: Option<Hold>,
    pub completed: Option<Done>,
    /// What operations dropped before the store answered may have done (a store over a
    /// database finishes a statement its caller stopped waiting for).
    pub maybe: Vec<Maybe>,
}

#[derive(Debug)]
pub enum Maybe {
    Claimed(Fingerprint),
    Completed(Done),
    Released(Token),
}

#[derive(Debug)]
pub struct Hold {
    pub token: Token,
    pub fingerprint: Fingerprint,
    /// The lease, on the simulation's clock.
    pub until: Instant,
    /// Its caller was cancelled and asked the store to release it in the background.
    pub drop_requested: bool,
}

#[derive(Debug)]
pub struct Done {
    pub token: Token,
    pub fingerprint: Fingerprint,
    pub output: Output,
}

/// How a claim stopped owning its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freed {
    Released,
    DropReleased,
    /// Its lease ran out and another claim took the key over.
    Expired,
    Completed,
}

/// What is known about one claim (token).
#[derive(Default, Debug)]
pub struct Facts {
    /// Its claim's answer reached the caller.
    pub delivered: bool,
    /// A fault touched one of its operations (a delay or an error): its owner may have
    /// lost its lease through no fault of the protocol.
    pub hindered: bool,
    /// Its operations under way: with an instant store, one that others see under way is
    /// held by a fault (a latency, a stall).
    pub in_flight: u32,
    /// Its caller was dropped and sent a background release.
    pub drop_sent: bool,
    pub exec: Option<usize>,
    pub freed: Option<Freed>,
}

impl Facts {
    /// A fault delayed or failed one of its operations, or is delaying one now.
    pub fn faulted(&self) -> bool {
        self.hindered || self.in_flight > 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum End {
    Running,
    Returned(Result<Out, SimError>),
    Panicked,
    Cancelled,
}

#[derive(Debug)]
pub struct Exec {
    pub key: KeyDigest,
    pub token: Token,
    /// When it started, on the schedule's clock.
    pub at: Duration,
    pub end: End,
}

/// One caller's view of its current attempt.
#[derive(Default, Debug)]
pub struct CallerView {
    pub last_answer: Option<Answer>,
    /// The execution its current attempt started, if any.
    pub exec: Option<usize>,
    /// A fault reached it in this attempt (an error from the store).
    pub store_failed: bool,
}

/// What an attempt returned (`None`: it panicked, was cancelled or hung), by which caller
/// and when.
pub type Returned = (usize, Duration, Option<Result<Out, SimError>>);

#[derive(Default, Debug)]
pub struct History {
    pub keys: HashMap<KeyDigest, KeyModel>,
    pub tokens: HashMap<TokenId, Facts>,
    pub execs: Vec<Exec>,
    pub callers: Vec<CallerView>,
    pub returned: Vec<Returned>,
    pub violations: Vec<String>,
    pub tally: Tally,
    /// When the schedule started.
    pub origin: Option<Instant>,
}

impl History {
    pub fn new(callers: usize) -> History {
        History {
            callers: (0..callers).map(|_| CallerView::default()).collect(),
            origin: Some(Instant::now()),
            ..History::default()
        }
    }

    /// How long the schedule has run, on its clock.
    pub fn now(&self) -> Duration {
        self.origin
            .map_or(Duration::ZERO, |origin| origin.elapsed())
    }

    pub fn facts(&mut self, key: &KeyDigest, token: Token) -> &mut Facts {
        self.tokens.entry(token_id(key, token)).or_default()
    }

    /// What a schedule did — every execution and every answer, with their times — without
    /// what differs from run to run by design (key digests and tokens, which depend on
    /// the schedules run before on the same store): two runs of a seed agree on it exactly.
    pub fn summary(&self) -> String {
        let execs: Vec<_> = self.execs.iter().map(|x| (x.at, &x.end)).collect();
        format!(
            "{execs:?}\n{:?}\n{:?}\n{:?}",
            self.returned, self.tally, self.violations
        )
    }

    /// Whether an operation dropped in flight may have done `what` to `key`.
    pub fn maybe(&self, key: &KeyDigest, what: impl Fn(&Maybe) -> bool) -> bool {
        self.keys
            .get(key)
            .is_some_and(|model| model.maybe.iter().any(what))
    }

    /// A replay of a record that a `complete` dropped in flight wrote: the model takes it.
    pub fn adopt_completed(&mut self, key: &KeyDigest, fingerprint: &Fingerprint, output: &Output) {
        let Some(model) = self.keys.get_mut(key) else {
            return;
        };
        if model.completed.is_some() {
            return;
        }
        let Some(i) = model.maybe.iter().position(|m| {
            matches!(m, Maybe::Completed(d) if d.fingerprint == *fingerprint && d.output == *output)
        }) else {
            return;
        };
        let Maybe::Completed(done) = model.maybe.swap_remove(i) else {
            unreachable!()
        };
        let token = done.token;
        if model
            .holder
            .as_ref()
            .is_some_and(|hold| hold.token == token)
        {
            model.holder = None;
        }
        model.completed = Some(done);
        self.facts(key, token).freed = Some(Freed::Completed);
        self.held("store: a complete dropped in flight applied whole or not at all");
    }

    /// Counts a check that held.
    pub fn held(&mut self, invariant: &'static str) {
        self.tally.add(invariant, 1);
    }

    /// Records a check that failed.
    pub fn violated(&mut self, invariant: &'static str, detail: String) {
        self.tally.add("VIOLATIONS", 1);
        self.violations.push(format!("{invariant}: {detail}"));
    }

    /// Checks `ok`, counting it under `invariant`.
    pub fn check(&mut self, ok: bool, invariant: &'static str, detail: impl FnOnce() -> String) {
        if ok {
            self.held(invariant);
        } else {
            self.violated(invariant, detail());
        }
    }
}

/// Counts by name, summed over schedules.
#[derive(Default, Clone, Debug)]
pub struct Tally(pub BTreeMap<&'static str, u64>);

impl Tally {
    pub fn add(&mut self, name: &'static str, n: u64) {
        *self.0.entry(name).or_default() += n;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (name, n) in &other.0 {
            self.add(name, *n);
        }
    }
}
