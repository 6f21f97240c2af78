//! [`Ledger`]: the layer between the fault wrapper and the store under test. It keeps the
//! leases on the simulation's (paused) clock, and checks every answer of the store against
//! a model of the contract built from the answers before it.
//!
//! Leases: the store under test keeps its records on its own clock (the memory store on
//! the real one, SQLite on the database's), which a paused tokio clock does not move. So
//! the ledger hands the store an hour-long lease and keeps the real one itself: when a
//! claim finds a holder whose lease ran out on the simulation's clock, the ledger releases
//! that holder in the store first (a fenced release, as a takeover is) and lets the claim
//! through. Everything else — atomic claims, fencing, replays — is the store's own.

use async_trait::async_trait;
use idem::store::{Busy, Claim, Output, Token};
use idem::{Fingerprint, Key, Store, StoreError};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use super::history::{Done, Freed, History, Hold, Maybe};

/// The lease the store under test is given: longer than any schedule.
const STORE_LEASE: Duration = Duration::from_secs(3600);

pub struct Ledger<'h, S> {
    inner: S,
    history: &'h Mutex<History>,
    /// One operation at a time, so that the model sees them in the order the store applied
    /// them (an SQL store may interleave them otherwise).
    serial: tokio::sync::Mutex<()>,
}

impl<'h, S: Store> Ledger<'h, S> {
    pub fn new(inner: S, history: &'h Mutex<History>) -> Self {
        Ledger {
            inner,
            history,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap()
    }

    /// Ends a holder whose lease ran out on the simulation's clock, as the store would.
    async fn take_over_expired(&self, key: &Key) {
        let digest = *key.digest();
        let expired = {
            let mut h = self.history();
            let now = Instant::now();
            match &h.keys.entry(digest).or_default().holder {
                // Released in the background (or about to be): a release, not a takeover.
                Some(hold) if hold.drop_requested => None,
                Some(hold) if hold.until <= now => Some(hold.token),
                _ => None,
            }
        };
        let Some(token) = expired else { return };
        // The store still holds it (an hour-long lease), unless it went another way. The
        // model changes once it answered: dropped before, the next claim tries again.
        let _ = self.inner.release(key, token).await;
        let mut h = self.history();
        let model = h.keys.entry(digest).or_default();
        if model
            .holder
            .as_ref()
            .is_some_and(|hold| hold.token == token)
        {
            model.holder = None;
            h.facts(&digest, token).freed = Some(Freed::Expired);
        }
    }
}

#[async_trait]
impl<S: Store> Store for Ledger<'_, S> {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let _serial = self.serial.lock().await;
        self.take_over_expired(key).await;
        let in_flight = InFlight::new(self.history, key, Maybe::Claimed(*fingerprint));
        let answer = self.inner.claim(key, fingerprint, STORE_LEASE).await;
        in_flight.answered();
        let mut h = self.history();
        let now = Instant::now();
        let digest = *key.digest();
        let model = h.keys.entry(digest).or_default();
        let (holder, completed) = (
            model.holder.as_ref().map(|hold| {
                (
                    hold.token,
                    hold.fingerprint,
                    hold.until,
                    hold.drop_requested,
                )
            }),
            model
                .completed
                .as_ref()
                .map(|done| (done.fingerprint, done.output.clone())),
        );
        match answer {
            Ok(Claim::Claimed(token)) => {
                h.check(
                    completed.is_none(),
                    "store: no claim over a completed record",
                    || "the store granted a claim over a completed record".into(),
                );
                if let Some((old, _, _, drop_requested)) = holder {
                    let released = drop_requested
                        || h.maybe(&digest, |m| matches!(m, Maybe::Released(t) if *t == old));
                    h.check(released, "store: one owner at a time", || {
                        format!("granted token {token:?} while {old:?} held a live lease")
                    });
                    h.facts(&digest, old).freed = Some(Freed::DropReleased);
                }
                h.keys.entry(digest).or_default().holder = Some(Hold {
                    token,
                    fingerprint: *fingerprint,
                    until: now + lease,
                    drop_requested: false,
                });
                h.held("store: claims granted as the model allows");
                Ok(Claim::Claimed(token))
            }
            Ok(Claim::Completed(record)) => {
                h.adopt_completed(&digest, &record.fingerprint, &record.output);
                let completed = h.keys[&digest]
                    .completed
                    .as_ref()
                    .map(|done| (done.fingerprint, done.output.clone()));
                let agrees = completed.as_ref().is_some_and(|(fp, output)| {
                    *fp == record.fingerprint && *output == record.output
                });
                h.check(agrees, "store: replays the record it was given", || {
                    "the store answered with a record it was not given (or lost one)".into()
                });
                Ok(Claim::Completed(record))
            }
            Ok(Claim::InProgress(busy)) => {
                let remaining = match holder {
                    Some((_, fp, until, _)) => {
                        h.check(
                            fp == busy.fingerprint,
                            "store: in-progress answers name the holder",
                            || "in progress with another fingerprint than its holder's".into(),
                        );
                        until.saturating_duration_since(now)
                    }
                    None => {
                        let fp = busy.fingerprint;
                        let maybe =
                            h.maybe(&digest, |m| matches!(m, Maybe::Claimed(f) if *f == fp));
                        h.check(maybe, "store: in-progress answers name the holder", || {
                            "in progress without a holder".into()
                        });
                        Duration::ZERO
                    }
                };
                // The lease as the simulation's clock has it, not the store's hour.
                Ok(Claim::InProgress(Busy {
                    fingerprint: busy.fingerprint,
                    lease_remaining: Some(remaining),
                    waiter: busy.waiter,
                }))
            }
            Err(e) => Err(e),
        }
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        let _serial = self.serial.lock().await;
        let result = self.inner.renew(key, token, STORE_LEASE).await;
        let mut h = self.history();
        let now = Instant::now();
        let model = h.keys.entry(*key.digest()).or_default();
        let owns = model
            .holder
            .as_ref()
            .is_some_and(|hold| hold.token == token);
        match &result {
            Ok(()) => {
                if let Some(hold) = model.holder.as_mut().filter(|hold| hold.token == token) {
                    hold.until = now + lease;
                }
                h.check(owns, "fencing: only the owner renews", || {
                    format!("renew accepted from {token:?}, which does not own the key")
                });
            }
            Err(StoreError::LeaseLost) => {
                h.check(!owns, "fencing: the owner's renew is accepted", || {
                    format!("renew refused to {token:?}, the owner")
                });
            }
            Err(_) => {}
        }
        result
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let _serial = self.serial.lock().await;
        let maybe = self.history().keys.get(key.digest()).and_then(|model| {
            let hold = model.holder.as_ref().filter(|hold| hold.token == token)?;
            Some(Maybe::Completed(Done {
                token,
                fingerprint: hold.fingerprint,
                output: output.clone(),
            }))
        });
        let in_flight = maybe.map(|maybe| InFlight::new(self.history, key, maybe));
        let result = self.inner.complete(key, token, output.clone(), ttl).await;
        if let Some(in_flight) = in_flight {
            in_flight.answered();
        }
        let mut h = self.history();
        let digest = *key.digest();
        let model = h.keys.entry(digest).or_default();
        let owns = model
            .holder
            .as_ref()
            .is_some_and(|hold| hold.token == token);
        let completed_by = model.completed.as_ref().map(|done| done.token);
        match &result {
            Ok(()) if owns => {
                let hold = model.holder.take().expect("owns");
                model.completed = Some(Done {
                    token,
                    fingerprint: hold.fingerprint,
                    output,
                });
                h.facts(&digest, token).freed = Some(Freed::Completed);
                h.held("fencing: a complete by the owner is recorded");
            }
            // Its owner's retry after a lost reply: the record stays as first written.
            Ok(()) if completed_by == Some(token) => {
                h.held("fencing: a complete by the owner is recorded")
            }
            Ok(()) => h.violated(
                "fencing: a stale token never completes",
                format!("complete accepted from {token:?}, which does not own the key"),
            ),
            Err(StoreError::LeaseLost) => h.check(
                !owns && completed_by != Some(token),
                "fencing: a stale token never completes",
                || format!("complete refused to {token:?}, the owner"),
            ),
            Err(_) => {}
        }
        result
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let _serial = self.serial.lock().await;
        let in_flight = InFlight::new(self.history, key, Maybe::Released(token));
        let result = self.inner.release(key, token).await;
        in_flight.answered();
        let mut h = self.history();
        let digest = *key.digest();
        let model = h.keys.entry(digest).or_default();
        let owns = model
            .holder
            .as_ref()
            .is_some_and(|hold| hold.token == token);
        match &result {
            Ok(()) => {
                if owns {
                    model.holder = None;
                    h.facts(&digest, token).freed = Some(Freed::Released);
                }
                h.check(owns, "fencing: a stale token never releases", || {
                    format!("release accepted from {token:?}, which does not own the key")
                });
            }
            Err(StoreError::LeaseLost) => {
                let earlier = h.maybe(&digest, |m| matches!(m, Maybe::Released(t) if *t == token));
                h.check(!owns || earlier, "fencing: the owner releases", || {
                    format!("release refused to {token:?}, the owner")
                })
            }
            Err(_) => {}
        }
        result
    }

    fn release_on_drop(&self, key: &Key, token: Token) {
        self.inner.release_on_drop(key, token);
        let mut h = self.history();
        let model = h.keys.entry(*key.digest()).or_default();
        if let Some(hold) = model.holder.as_mut().filter(|hold| hold.token == token) {
            hold.drop_requested = true;
        }
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.inner.purge_expired().await
    }

    fn max_output_len(&self) -> usize {
        self.inner.max_output_len()
    }
}

/// An operation under way: if its future is dropped before the store answered, what it
/// may have done goes into the key's model.
struct InFlight<'h> {
    history: &'h Mutex<History>,
    key: idem::store::KeyDigest,
    maybe: Option<Maybe>,
}

impl<'h> InFlight<'h> {
    fn new(history: &'h Mutex<History>, key: &Key, maybe: Maybe) -> Self {
        InFlight {
            history,
            key: *key.digest(),
            maybe: Some(maybe),
        }
    }

    fn answered(mut self) {
        self.maybe = None;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let (Some(maybe), Ok(mut h)) = (self.maybe.take(), self.history.lock()) {
            h.keys.entry(self.key).or_default().maybe.push(maybe);
        }
    }
}
