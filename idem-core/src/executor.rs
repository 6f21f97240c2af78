//! The protocol of one idempotent call: claim, replay or run, record.

use futures_util::FutureExt;
use futures_util::future::{Either, select};
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::CodecError;
use crate::observe::{self, CallOutcome};
use crate::policy::{ErrorPolicy, OnConflict, Options, ValueCodec};
use crate::store::{Claim, Outcome, Output, Record, Store, Token};
use crate::{Error, Fingerprint, Key, StoreError};

/// Longest pause between polls of a store that cannot notify waiters.
const MAX_POLL: Duration = Duration::from_millis(250);
/// The first pause before retrying a failed `complete`, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(10);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Runs `body` at most once per key: the whole protocol (README, "Semantics").
///
/// `key` and `fingerprint` are computed by the caller before the body could run (the
/// macro evaluates them from the arguments). Mismatch is checked on every path that finds
/// a record. The body's `Ok` is recorded for `options.ttl`; its `Err` is released or
/// recorded as `policy` says. A panic releases the claim and resumes; a dropped future
/// asks the store to release in the background.
///
/// The output codec, the error policy and `into_error` (usually `E::from`) are values, not
/// trait bounds, so that the macro can check each where the user wrote the type.
#[allow(clippy::too_many_arguments)]
pub async fn execute<S, P, T, E, F>(
    store: &S,
    key: Result<Key, Error>,
    fingerprint: Result<Fingerprint, CodecError>,
    options: &Options,
    output: ValueCodec<T>,
    policy: P,
    into_error: fn(Error) -> E,
    body: F,
) -> Result<T, E>
where
    S: Store + ?Sized,
    P: ErrorPolicy<E>,
    F: Future<Output = Result<T, E>>,
{
    let key = key.map_err(into_error)?;
    let fingerprint = fingerprint.map_err(|e| into_error(e.into()))?;
    let span = observe::span(options.namespace, key.digest());
    let call = Call {
        store,
        key: &key,
        fingerprint: &fingerprint,
        options,
    };
    call.run(output, policy, into_error, body)
        .instrument(span)
        .await
}

pub(crate) struct Call<'a, S: ?Sized> {
    pub(crate) store: &'a S,
    pub(crate) key: &'a Key,
    pub(crate) fingerprint: &'a Fingerprint,
    pub(crate) options: &'a Options,
}

pub(crate) enum Acquired {
    Owner(Token),
    Replay(Record),
}

impl<S: Store + ?Sized> Call<'_, S> {
    async fn run<P, T, E, F>(
        &self,
        output: ValueCodec<T>,
        policy: P,
        into_error: fn(Error) -> E,
        body: F,
    ) -> Result<T, E>
    where
        P: ErrorPolicy<E>,
        F: Future<Output = Result<T, E>>,
    {
        let token = match self.acquire().await.map_err(into_error)? {
            Acquired::Owner(token) => token,
            Acquired::Replay(record) => {
                return self.replay(&output, &policy, record).map_err(into_error)?;
            }
        };
        let guard = ReleaseOnDrop {
            store: self.store,
            key: self.key,
            token: Some(token),
        };
        let result = AssertUnwindSafe(self.with_heartbeat(token, body))
            .catch_unwind()
            .await;
        guard.disarm();
        match result {
            Err(panic) => {
                self.release(token).await;
                self.outcome(CallOutcome::Panicked);
                std::panic::resume_unwind(panic)
            }
            Ok(Ok(value)) => match output.encode(&value).and_then(|b| self.fits(b)) {
                Ok(bytes) => {
                    self.record(token, Outcome::Ok, bytes).await;
                    Ok(value)
                }
                Err(e) => {
                    // Unrecordable output: free the key and say so loudly.
                    self.release(token).await;
                    self.outcome(CallOutcome::CodecError);
                    Err(into_error(Error::Codec(e)))
                }
            },
            Ok(Err(error)) => {
                match policy.record(&error).map(|b| b.and_then(|b| self.fits(b))) {
                    Some(Ok(bytes)) => self.record(token, Outcome::Err, bytes).await,
                    Some(Err(e)) => {
                        tracing::warn!(%e, "could not encode the error to cache it; released");
                        self.release(token).await;
                        self.outcome(CallOutcome::Released);
                    }
                    None => {
                        self.release(token).await;
                        self.outcome(CallOutcome::Released);
                    }
                }
                Err(error)
            }
        }
    }

    fn fits(&self, bytes: bytes::Bytes) -> Result<bytes::Bytes, CodecError> {
        fits(bytes, self.store.max_output_len())
    }

    /// Claims the key, waiting for a concurrent owner if the options say so.
    async fn acquire(&self) -> Result<Acquired, Error> {
        let mut patience = Patience::new(self.options);
        loop {
            let claim = self.claim().await;
            if let Some(acquired) = self.settle(claim, &mut patience).await? {
                return Ok(acquired);
            }
        }
    }
}

/// How long a call may still wait for a concurrent owner, and how often it polls.
pub(crate) struct Patience {
    wait_timeout: Duration,
    /// Set when the call first has to wait (most calls never do).
    deadline: Option<Instant>,
    poll: Duration,
}

impl Patience {
    pub(crate) fn new(options: &Options) -> Self {
        Patience {
            wait_timeout: options.wait_timeout,
            deadline: None,
            poll: Duration::from_millis(2),
        }
    }
}

impl<S: ?Sized> Call<'_, S> {
    /// What a claim's answer means for this call: `Some` when it owns the key or has a
    /// record to replay, `None` after waiting for a concurrent owner (claim again).
    pub(crate) async fn settle(
        &self,
        claim: Result<Claim, StoreError>,
        patience: &mut Patience,
    ) -> Result<Option<Acquired>, Error> {
        let busy = match claim {
            Ok(Claim::Claimed(token)) => return Ok(Some(Acquired::Owner(token))),
            Ok(Claim::Completed(record)) => {
                self.check_fingerprint(&record.fingerprint)?;
                return Ok(Some(Acquired::Replay(record)));
            }
            Ok(Claim::InProgress(busy)) => busy,
            Err(e) => {
                self.outcome(CallOutcome::StoreError);
                return Err(e.into());
            }
        };
        self.check_fingerprint(&busy.fingerprint)?;
        if self.options.on_conflict == OnConflict::Reject {
            self.outcome(CallOutcome::InProgress);
            return Err(Error::InProgress);
        }
        let now = Instant::now();
        let deadline = *patience.deadline.get_or_insert(now + patience.wait_timeout);
        if now >= deadline {
            self.outcome(CallOutcome::WaitTimeout);
            return Err(Error::WaitTimeout);
        }
        // Wake when the owner finishes, its lease runs out, or our patience does.
        let mut pause = deadline - now;
        if let Some(lease) = busy.lease_remaining {
            pause = pause.min(lease + Duration::from_millis(1));
        }
        match busy.waiter {
            Some(waiter) => {
                let _ = tokio::time::timeout(pause, waiter).await;
            }
            None => {
                tokio::time::sleep(pause.min(patience.poll)).await;
                patience.poll = (patience.poll * 2).min(MAX_POLL);
            }
        }
        Ok(None)
    }

    fn check_fingerprint(&self, recorded: &Fingerprint) -> Result<(), Error> {
        if recorded == self.fingerprint {
            Ok(())
        } else {
            self.outcome(CallOutcome::Mismatch);
            Err(Error::PayloadMismatch)
        }
    }

    /// The recorded result: `Ok(Ok)` / `Ok(Err)` replays it, `Err` is a codec failure.
    pub(crate) fn replay<P, T, E>(
        &self,
        output: &ValueCodec<T>,
        policy: &P,
        record: Record,
    ) -> Result<Result<T, E>, Error>
    where
        P: ErrorPolicy<E>,
    {
        let replayed = match record.output.outcome {
            Outcome::Ok => output.decode(&record.output.bytes).map(Ok),
            Outcome::Err => policy.replay(&record.output.bytes).map(Err),
        };
        match replayed {
            Ok(result) => {
                self.outcome(CallOutcome::Replayed);
                Ok(result)
            }
            Err(e) => {
                self.outcome(CallOutcome::CodecError);
                Err(Error::Codec(e))
            }
        }
    }

    pub(crate) fn outcome(&self, outcome: CallOutcome) {
        observe::record(self.options.namespace, outcome);
    }
}

impl<S: Store + ?Sized> Call<'_, S> {
    /// Runs the body while renewing the lease every third of it.
    async fn with_heartbeat<F: Future>(&self, token: Token, body: F) -> F::Output {
        let mut body = pin!(body);
        // A body that finishes in its first poll never arms the heartbeat's timer.
        if let Poll::Ready(output) = poll_fn(|cx| Poll::Ready(body.as_mut().poll(cx))).await {
            return output;
        }
        let beat = pin!(self.heartbeat(token));
        match select(body, beat).await {
            Either::Left((output, _)) => output,
            Either::Right((never, _)) => match never {},
        }
    }

    // The store calls of every call: the built-in `MemoryStore`'s are awaited in place,
    // without `#[async_trait]`'s box (see `Store::as_memory`).

    async fn claim(&self) -> Result<Claim, StoreError> {
        let lease = self.options.lease;
        #[cfg(feature = "moka")]
        if let Some(memory) = self.store.as_memory() {
            return Ok(memory.claim_now(self.key, self.fingerprint, lease));
        }
        self.store.claim(self.key, self.fingerprint, lease).await
    }

    async fn complete(&self, token: Token, output: Output) -> Result<(), StoreError> {
        let ttl = self.options.ttl;
        #[cfg(feature = "moka")]
        if let Some(memory) = self.store.as_memory() {
            return memory.complete_now(self.key, token, output, ttl);
        }
        self.store.complete(self.key, token, output, ttl).await
    }

    async fn store_release(&self, token: Token) -> Result<(), StoreError> {
        #[cfg(feature = "moka")]
        if let Some(memory) = self.store.as_memory() {
            return memory.release_now(self.key, token);
        }
        self.store.release(self.key, token).await
    }

    async fn heartbeat(&self, token: Token) -> Infallible {
        let lease = self.options.lease;
        let period = (lease / 3).max(Duration::from_millis(1));
        let mut lost = false;
        loop {
            tokio::time::sleep(period).await;
            if lost {
                continue;
            }
            match self.store.renew(self.key, token, lease).await {
                Ok(()) => {}
                Err(StoreError::LeaseLost) => {
                    tracing::warn!(
                        "lease lost while the body runs; its result will not be recorded"
                    );
                    lost = true;
                }
                Err(e) => observe::store_error(self.options.namespace, "renew", &e),
            }
        }
    }

    /// Records the output. A failure here does not undo the body, so the caller still gets
    /// the body's result. `complete` is fenced and idempotent for its owner, so a failed one
    /// is retried with backoff while the claim's lease lasts (the body just ended, and the
    /// heartbeat renewed the lease at most a third of it ago); only a store unreachable for
    /// that whole time leaves the key to run again after the lease.
    async fn record(&self, token: Token, outcome: Outcome, bytes: bytes::Bytes) {
        let output = Output { outcome, bytes };
        let give_up = Instant::now() + self.options.lease;
        let mut pause = FIRST_RETRY;
        loop {
            let error = match self.complete(token, output.clone()).await {
                Ok(()) => return self.outcome(CallOutcome::Executed),
                Err(StoreError::LeaseLost) => {
                    tracing::warn!("lease lost: another call took the record over; not recorded");
                    return self.outcome(CallOutcome::LeaseLost);
                }
                Err(e) => e,
            };
            observe::store_error(self.options.namespace, "complete", &error);
            let now = Instant::now();
            if now + pause >= give_up {
                return self.outcome(CallOutcome::StoreError);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY);
        }
    }

    async fn release(&self, token: Token) {
        match self.store_release(token).await {
            Ok(()) => {}
            Err(StoreError::LeaseLost) => self.outcome(CallOutcome::LeaseLost),
            Err(e) => observe::store_error(self.options.namespace, "release", &e),
        }
    }
}

/// The encoded output, if a store that holds at most `max` bytes can record it. One it
/// cannot would hold the claim until its lease ran out, and then run again: it is refused
/// like an unencodable one.
pub(crate) fn fits(bytes: bytes::Bytes, max: usize) -> Result<bytes::Bytes, CodecError> {
    if bytes.len() <= max {
        return Ok(bytes);
    }
    Err(CodecError::new(
        "idem",
        "record the output",
        format!(
            "it is {} bytes encoded, more than the {max} this store can record",
            bytes.len()
        ),
    ))
}

/// Releases the claim if the call's future is dropped before it finishes.
struct ReleaseOnDrop<'a, S: Store + ?Sized> {
    store: &'a S,
    key: &'a Key,
    token: Option<Token>,
}

impl<S: Store + ?Sized> ReleaseOnDrop<'_, S> {
    fn disarm(mut self) {
        self.token = None;
    }
}

impl<S: Store + ?Sized> Drop for ReleaseOnDrop<'_, S> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            tracing::debug!("call cancelled; releasing its claim");
            self.store.release_on_drop(self.key, token);
        }
    }
}
