//! One schedule: a [`Plan`] drawn from a seed (keys with their options, callers with their
//! attempts, the faults), run against a store, and the invariants checked on its history.

use futures_util::future::join_all;
use idem::codec::Bincode;
use idem::protocol::{CacheErrors, CacheIf, Idempotent, ValueCodec};
use idem::testing::{Fault, FaultyStore, Op};
use idem::{Fingerprint, Key, OnConflict, Options, Store};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use super::history::{Answer, CallerView, End, Exec, Freed, History, IdemKind, Out, SimError};
use super::ledger::Ledger;
use super::rng::Rng;
use super::tap::Tap;

/// The namespace of every simulated function.
const NAMESPACE: &str = "idem::simulation";

/// What a panicking body panics with (the panic hook keeps these quiet).
pub const PANIC: &str = "simulated panic in a body";

/// The lease the faults' durations are drawn against.
const FAULT_LEASE: u64 = 300;

/// The longest an attempt may take: its wait (under `wait`), its body, the retries of its
/// record (they stop a lease after the body), and the most the plan's faults delay one
/// operation (`delay`) on each of the claim that ends the wait, the last `complete` and a
/// `release` — with one to spare.
fn bound(slot: &Slot, attempt: &Attempt, delay: Duration) -> Duration {
    let wait = match slot.on_conflict {
        OnConflict::Wait => slot.wait_timeout,
        OnConflict::Reject => Duration::ZERO,
    };
    wait + attempt.body + slot.lease + 4 * delay
}

#[derive(Clone, Copy, Debug)]
enum Errors {
    Release,
    Cache,
    /// Declined is cached, transient released.
    CacheIf,
}

/// One record: a key under a scope (0 = unscoped), with its function's options.
#[derive(Debug)]
struct Slot {
    key: u8,
    scope: u8,
    lease: Duration,
    on_conflict: OnConflict,
    wait_timeout: Duration,
    errors: Errors,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BodyEnd {
    Ok,
    Declined,
    Transient,
    Panic,
}

#[derive(Debug)]
struct Attempt {
    body: Duration,
    end: BodyEnd,
    /// Dropped after this many polls of the call's future.
    cancel_after_polls: Option<u32>,
}

#[derive(Debug)]
struct Caller {
    slot: usize,
    payload: u8,
    start: Duration,
    retry_pause: Duration,
    attempts: Vec<Attempt>,
}

#[derive(Debug)]
struct FaultPlan {
    seed: u64,
    rules: Vec<(Fault, Vec<Op>, f64)>,
}

impl FaultPlan {
    /// The most the faults delay one operation: every latency and stall at once.
    fn max_delay(&self) -> Duration {
        self.rules
            .iter()
            .map(|(fault, _, _)| match fault {
                Fault::Latency(d) | Fault::Stall(d) => *d,
                _ => Duration::ZERO,
            })
            .sum()
    }
}

/// Everything a schedule does, drawn from its seed.
#[derive(Debug)]
pub struct Plan {
    slots: Vec<Slot>,
    callers: Vec<Caller>,
    faults: FaultPlan,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Plan {
    pub fn draw(seed: u64) -> Plan {
        let mut rng = Rng::new(seed);
        let keys = 1 + rng.below(3) as u8;
        let scopes = 1 + rng.below(2) as u8;
        let mut slots = Vec::new();
        for key in 0..keys {
            for scope in 0..scopes {
                slots.push(Slot {
                    key,
                    scope,
                    lease: ms(rng.pick(&[30, 90, 300])),
                    on_conflict: rng.pick(&[OnConflict::Reject, OnConflict::Wait]),
                    wait_timeout: ms(rng.pick(&[50, 500, 2000])),
                    errors: rng.pick(&[Errors::Release, Errors::Cache, Errors::CacheIf]),
                });
            }
        }
        let callers = (0..2 + rng.below(5))
            .map(|_| {
                // Half the callers on the first record: contention.
                let slot = if rng.chance(50) {
                    0
                } else {
                    rng.below(slots.len() as u64) as usize
                };
                let lease = slots[slot].lease.as_millis() as u64;
                Caller {
                    slot,
                    payload: u8::from(rng.chance(15)),
                    start: ms(rng.below(lease)),
                    retry_pause: ms(rng.pick(&[0, 10, lease])),
                    attempts: (0..1 + rng.below(3))
                        .map(|_| Attempt {
                            body: match rng.below(10) {
                                0..=2 => Duration::ZERO,
                                3..=6 => ms(rng.below(lease)),
                                // Longer than the lease: only the heartbeat keeps it.
                                _ => ms(lease * (2 + rng.below(3))),
                            },
                            end: match rng.below(10) {
                                0..=6 => BodyEnd::Ok,
                                7 => BodyEnd::Declined,
                                8 => BodyEnd::Transient,
                                _ => BodyEnd::Panic,
                            },
                            cancel_after_polls: rng.chance(15).then(|| 1 + rng.below(6) as u32),
                        })
                        .collect(),
                }
            })
            .collect();
        let mut rules = Vec::new();
        // A third of the schedules run without faults.
        if !rng.chance(33) {
            let lease = FAULT_LEASE;
            let p = |rng: &mut Rng| rng.pick(&[0.02, 0.05, 0.15]);
            let ops = |rng: &mut Rng| -> Vec<Op> {
                Op::ALL.into_iter().filter(|_| rng.chance(50)).collect()
            };
            if rng.chance(50) {
                rules.push((
                    Fault::Latency(ms(1 + rng.below(lease / 2))),
                    ops(&mut rng),
                    p(&mut rng),
                ));
            }
            if rng.chance(50) {
                rules.push((Fault::Fail, ops(&mut rng), p(&mut rng)));
            }
            if rng.chance(50) {
                rules.push((Fault::LoseReply, ops(&mut rng), p(&mut rng)));
            }
            if rng.chance(30) {
                rules.push((Fault::Stall(ms(lease * 2)), ops(&mut rng), p(&mut rng)));
            }
        }
        Plan {
            slots,
            callers,
            faults: FaultPlan {
                seed: rng.next(),
                rules,
            },
        }
    }
}

/// The fingerprint of a caller's payload (hashed once: it is most of a call's cost here).
fn fingerprint(payload: u8) -> Fingerprint {
    static PAYLOADS: OnceLock<[Fingerprint; 2]> = OnceLock::new();
    PAYLOADS.get_or_init(|| [0_u8, 1].map(|p| Fingerprint::of(&p).unwrap()))[usize::from(payload)]
}

/// Gives every schedule's keys their own text, so that schedules may share a store.
static RUN: AtomicU64 = AtomicU64::new(0);

/// Runs `plan` against `store` (on a current-thread runtime the caller made, its clock
/// paused or not) and returns its history, invariants checked.
/// `slack` is added to every call's bound: on a real clock, I/O takes time of its own.
pub async fn run<S: Store>(plan: &Plan, store: S, slack: Duration) -> History {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let history = Mutex::new(History::new(plan.callers.len()));
    let mut faulty = FaultyStore::new(Ledger::new(store, &history), plan.faults.seed);
    for (fault, ops, p) in &plan.faults.rules {
        faulty = faulty.inject(*fault, ops, *p);
    }
    let keys: Vec<Key> = plan
        .slots
        .iter()
        .map(|slot| {
            let text = format!("{run}-{}", slot.key);
            match slot.scope {
                0 => Key::new(NAMESPACE, &text),
                scope => Key::scoped(NAMESPACE, &format!("tenant-{scope}"), &text),
            }
            .unwrap()
        })
        .collect();
    let world = World {
        plan,
        keys: &keys,
        store: &faulty,
        history: &history,
        slack,
    };
    join_all((0..plan.callers.len()).map(|c| world.caller(c))).await;
    world.finish();
    let injected = faulty.injected();
    let mut history = history.into_inner().unwrap();
    let tally = &mut history.tally;
    tally.add("faults injected: latency", injected.latency);
    tally.add("faults injected: failed before applying", injected.failed);
    tally.add(
        "faults injected: reply lost after applying",
        injected.lost_replies,
    );
    tally.add(
        "faults injected: reply stalled past the lease",
        injected.stalls,
    );
    history
}

struct World<'a, S> {
    plan: &'a Plan,
    keys: &'a [Key],
    store: &'a S,
    history: &'a Mutex<History>,
    slack: Duration,
}

/// How one attempt ended.
enum Ended {
    Returned(Result<Out, SimError>),
    Panicked,
    Cancelled,
    Hung(Duration),
}

impl<S: Store> World<'_, S> {
    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap()
    }

    async fn caller(&self, c: usize) {
        let me = &self.plan.callers[c];
        tokio::time::sleep(me.start).await;
        for attempt in &me.attempts {
            self.history().callers[c] = CallerView::default();
            let tap = Tap {
                store: self.store,
                caller: c,
                history: self.history,
            };
            let call = Guarded {
                call: Box::pin(self.call(c, &tap, attempt)),
                polls_left: attempt.cancel_after_polls,
            };
            let bound = bound(
                &self.plan.slots[me.slot],
                attempt,
                self.plan.faults.max_delay(),
            ) + self.slack;
            let ended = tokio::time::timeout(bound, call)
                .await
                .unwrap_or(Ended::Hung(bound));
            let retry = self.check_attempt(c, &ended);
            if !retry {
                break;
            }
            tokio::time::sleep(me.retry_pause).await;
        }
    }

    /// One attempt of caller `c`: the protocol around a body that records itself.
    async fn call<T: Store>(
        &self,
        c: usize,
        store: &T,
        attempt: &Attempt,
    ) -> Result<Out, SimError> {
        let me = &self.plan.callers[c];
        let slot = &self.plan.slots[me.slot];
        let key = self.keys[me.slot].clone();
        let fingerprint = fingerprint(me.payload);
        let body = self.body(c, attempt);
        let options = Options {
            namespace: NAMESPACE,
            ttl: Duration::from_secs(24 * 3600),
            lease: slot.lease,
            on_conflict: slot.on_conflict,
            wait_timeout: slot.wait_timeout,
        };
        let spec = Idempotent::<Out, SimError>::new(options);
        match slot.errors {
            Errors::Release => spec.run(store, key, fingerprint, body).await,
            Errors::Cache => {
                spec.errors(CacheErrors(ValueCodec::new::<Bincode>()))
                    .run(store, key, fingerprint, body)
                    .await
            }
            Errors::CacheIf => {
                spec.errors(CacheIf {
                    is_permanent: |e| matches!(e, SimError::Declined(_)),
                    codec: ValueCodec::new::<Bincode>(),
                })
                .run(store, key, fingerprint, body)
                .await
            }
        }
    }

    async fn body(&self, c: usize, attempt: &Attempt) -> Result<Out, SimError> {
        let me = &self.plan.callers[c];
        let slot = &self.plan.slots[me.slot];
        let exec = self.start_exec(c);
        let running = Running {
            history: self.history,
            exec,
        };
        tokio::time::sleep(attempt.body).await;
        let out = Out {
            key: slot.key,
            scope: slot.scope,
            payload: me.payload,
            exec: exec as u32,
        };
        let result = match attempt.end {
            BodyEnd::Ok => Ok(out),
            BodyEnd::Declined => Err(SimError::Declined(out)),
            BodyEnd::Transient => Err(SimError::Transient(out)),
            BodyEnd::Panic => {
                running.end(End::Panicked);
                panic!("{PANIC}");
            }
        };
        running.end(End::Returned(result.clone()));
        result
    }

    /// A body starts: it must own a claim of its own, and a second run of its key must
    /// have a reason the contract names.
    fn start_exec(&self, c: usize) -> usize {
        let key = *self.keys[self.plan.callers[c].slot].digest();
        let mut guard = self.history();
        let h = &mut *guard;
        let exec = h.execs.len();
        let answer = h.callers[c].last_answer;
        let token = match answer {
            Some(Answer::Claimed(token)) if h.facts(&key, token).exec.is_none() => {
                h.held("a body runs only on a fresh claim of its own");
                token
            }
            other => {
                h.violated(
                    "a body runs only on a fresh claim of its own",
                    format!("caller {c} ran its body after the claim answered {other:?}"),
                );
                idem::store::Token::new(u64::MAX - exec as u64)
            }
        };
        h.facts(&key, token).exec = Some(exec);
        h.callers[c].exec = Some(exec);
        let own = h.facts(&key, token);
        let zombie = own.freed == Some(Freed::Expired) && own.faulted();
        // The most recent earlier run of this key says why this one may run.
        let earlier: Vec<usize> = (0..exec).filter(|&e| h.execs[e].key == key).collect();
        for &e in &earlier {
            let t = h.execs[e].token;
            let fate = h.facts(&key, t).freed;
            let ok = zombie
                || matches!(
                    fate,
                    Some(Freed::Released | Freed::DropReleased | Freed::Expired)
                );
            h.check(
                ok,
                "no second run while an earlier one owns or completed the key",
                || format!("exec {exec} (caller {c}) ran while exec {e} was {fate:?}"),
            );
        }
        if let Some(&e) = earlier.last() {
            let t = h.execs[e].token;
            let facts = h.facts(&key, t);
            let (fate, hindered, drop_sent) = (facts.freed, facts.faulted(), facts.drop_sent);
            let class = if zombie {
                Some("second run: its own claim was taken over while a fault stalled it")
            } else {
                match (fate, &h.execs[e].end) {
                    (Some(Freed::Released), End::Returned(Err(_))) => {
                        Some("second run: the first's error released the claim")
                    }
                    (Some(Freed::Released), End::Panicked) => {
                        Some("second run: the first panicked and released")
                    }
                    (Some(Freed::DropReleased), _) => {
                        Some("second run: the first was cancelled and released")
                    }
                    (Some(Freed::Expired), End::Running) if hindered => {
                        Some("second run: lease expired, a fault held the first's heartbeat")
                    }
                    (Some(Freed::Expired), End::Returned(_)) if hindered => {
                        Some("second run: lease expired, the first's record could not be written")
                    }
                    (Some(Freed::Expired), End::Cancelled | End::Panicked)
                        if hindered || drop_sent =>
                    {
                        Some("second run: lease expired, the first's release was lost")
                    }
                    _ => None,
                }
            };
            match class {
                Some(class) => h.held(class),
                None => {
                    let end = h.execs[e].end.clone();
                    h.violated(
                        "a second run has a reason the contract names",
                        format!("exec {exec} (caller {c}) after exec {e}: {fate:?}, {end:?}"),
                    );
                }
            }
        }
        let at = h.now();
        h.execs.push(Exec {
            key,
            token,
            at,
            end: End::Running,
        });
        exec
    }

    /// Checks what an attempt returned; says whether the caller retries.
    fn check_attempt(&self, c: usize, ended: &Ended) -> bool {
        let me = &self.plan.callers[c];
        let slot = &self.plan.slots[me.slot];
        let key = *self.keys[me.slot].digest();
        let ours = fingerprint(me.payload);
        let mut guard = self.history();
        let h = &mut *guard;
        let returned = match ended {
            Ended::Returned(result) => Some(result.clone()),
            _ => None,
        };
        let at = h.now();
        h.returned.push((c, at, returned));
        let view = &h.callers[c];
        let (exec, answer, store_failed) = (view.exec, view.last_answer, view.store_failed);
        let result = match ended {
            Ended::Hung(bound) => {
                h.violated(
                    "every call ends within its bound",
                    format!("caller {c} still running after {bound:?}"),
                );
                return false;
            }
            Ended::Panicked | Ended::Cancelled => {
                h.held("every call ends within its bound");
                return true;
            }
            Ended::Returned(result) => result,
        };
        h.held("every call ends within its bound");
        if let Some(e) = exec {
            let body = h.execs[e].end.clone();
            h.check(
                body == End::Returned(result.clone()),
                "a call that ran its body returns its body's result",
                || format!("caller {c} returned {result:?}, its body {body:?}"),
            );
        } else {
            match result {
                Ok(out) | Err(SimError::Declined(out) | SimError::Transient(out)) => {
                    let recorded = h.keys.get(&key).and_then(|m| m.completed.as_ref());
                    let traced = h.execs.get(out.exec as usize).is_some_and(|x| {
                        x.key == key
                            && recorded.is_some_and(|done| done.token == x.token)
                            && x.end == End::Returned(result.clone())
                    });
                    let same =
                        (out.key, out.scope, out.payload) == (slot.key, slot.scope, me.payload);
                    h.check(
                        traced && same,
                        "a replay is the recorded output of the same key, scope and payload",
                        || {
                            format!(
                                "caller {c} (slot {slot:?}, payload {}) replayed {result:?}",
                                me.payload
                            )
                        },
                    );
                }
                Err(SimError::Idem(IdemKind::PayloadMismatch)) => {
                    let other = matches!(answer,
                        Some(Answer::Completed(fp) | Answer::InProgress(fp)) if fp != ours);
                    h.check(
                        other,
                        "a mismatch is reported only for another payload",
                        || format!("caller {c} got a mismatch after {answer:?}"),
                    );
                }
                Err(SimError::Idem(IdemKind::InProgress)) => {
                    let same = slot.on_conflict == OnConflict::Reject
                        && matches!(answer, Some(Answer::InProgress(fp)) if fp == ours);
                    h.check(
                        same,
                        "in progress only for the same payload, under reject",
                        || format!("caller {c} got InProgress after {answer:?} ({slot:?})"),
                    );
                }
                Err(SimError::Idem(IdemKind::WaitTimeout)) => {
                    h.check(
                        slot.on_conflict == OnConflict::Wait,
                        "a wait timeout only under wait",
                        || format!("caller {c}: {slot:?}"),
                    );
                }
                Err(SimError::Idem(IdemKind::Store)) => {
                    h.check(
                        store_failed,
                        "a store error only where a fault was injected",
                        || format!("caller {c} got a store error without a fault"),
                    );
                }
                Err(SimError::Idem(IdemKind::Other)) => h.violated(
                    "no other error",
                    format!("caller {c} got another idem error"),
                ),
            }
        }
        matches!(
            result,
            Err(SimError::Transient(_)
                | SimError::Idem(IdemKind::InProgress | IdemKind::WaitTimeout | IdemKind::Store))
        )
    }

    /// After every caller returned: no body still running, and every claim left in the
    /// store is one a fault or a cancellation orphaned (the lease bounds it).
    fn finish(&self) {
        let mut guard = self.history();
        let h = &mut *guard;
        let running = h.execs.iter().filter(|x| x.end == End::Running).count();
        h.check(running == 0, "no body runs after its call returned", || {
            format!("{running} bodies still running")
        });
        let left: Vec<_> = h
            .keys
            .iter()
            .filter_map(|(key, model)| {
                model
                    .holder
                    .as_ref()
                    .map(|hold| (*key, hold.token, hold.drop_requested))
            })
            .collect();
        for (key, token, drop_requested) in left {
            let facts = h.facts(&key, token);
            let explained =
                drop_requested || !facts.delivered || facts.faulted() || facts.drop_sent;
            h.check(
                explained,
                "no claim left behind without a fault to explain it",
                || format!("claim {token:?} is still held after every call returned"),
            );
        }
    }
}

/// Marks its execution cancelled if the body is dropped before it ends.
struct Running<'a> {
    history: &'a Mutex<History>,
    exec: usize,
}

impl Running<'_> {
    fn end(self, end: End) {
        self.history.lock().unwrap().execs[self.exec].end = end;
        std::mem::forget(self);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut h) = self.history.lock() {
            h.execs[self.exec].end = End::Cancelled;
        }
    }
}

/// A call that may be dropped after a number of polls (a cancellation at any await point),
/// and whose panic is caught.
struct Guarded<'a> {
    call: Pin<Box<dyn Future<Output = Result<Out, SimError>> + 'a>>,
    polls_left: Option<u32>,
}

impl Future for Guarded<'_> {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let call = &mut self.call;
        match catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx))) {
            Ok(Poll::Ready(result)) => return Poll::Ready(Ended::Returned(result)),
            Err(_) => return Poll::Ready(Ended::Panicked),
            Ok(Poll::Pending) => {}
        }
        match &mut self.polls_left {
            Some(0 | 1) => Poll::Ready(Ended::Cancelled),
            Some(n) => {
                *n -= 1;
                Poll::Pending
            }
            None => Poll::Pending,
        }
    }
}
