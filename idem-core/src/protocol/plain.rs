//! Plain mode: each step is its own store operation; a heartbeat renews the lease while the
//! body runs, a failed record is retried, and a cancelled or panicking call releases.

use futures_util::FutureExt;
use futures_util::future::{Either, select};
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

use super::Idempotent;
use super::decide::{Acquired, Disposition, Leave, Patience};
use crate::error_policy::ErrorPolicy;
use crate::observe::{self, CallOutcome};
use crate::options::Options;
use crate::store::{Claim, Output, Store, Token};
use crate::{Fingerprint, Key, StoreError};

/// The first pause before retrying a failed `complete`, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(10);
const MAX_RETRY: Duration = Duration::from_secs(1);

impl<T, E, P: ErrorPolicy<E>> Idempotent<T, E, P> {
    /// Runs `body` at most once per key: claims the key (or replays its record, or reports
    /// a concurrent owner as the options say), runs the body while renewing the lease, and
    /// records its result (its `Err` as the error policy says).
    ///
    /// A panic releases the claim and resumes; a dropped future asks the store to release
    /// in the background. A record that cannot be written is retried while the lease
    /// lasts; the body's result is returned either way.
    pub async fn run<S, F>(
        &self,
        store: &S,
        key: Key,
        fingerprint: Fingerprint,
        body: F,
    ) -> Result<T, E>
    where
        S: Store + ?Sized,
        F: Future<Output = Result<T, E>>,
    {
        self.plain(store, &key, &fingerprint, body).await.0
    }

    /// [`run`](Self::run), and what the call did: ran the body, replayed, or found the key
    /// in progress (with the owner's remaining lease), for adapters that tell their callers.
    pub async fn run_reported<S, F>(
        &self,
        store: &S,
        key: Key,
        fingerprint: Fingerprint,
        body: F,
    ) -> (Result<T, E>, Disposition)
    where
        S: Store + ?Sized,
        F: Future<Output = Result<T, E>>,
    {
        self.plain(store, &key, &fingerprint, body).await
    }

    /// The call in its span. Not an `async fn`, so that it adds no layer of its own around
    /// the body's future: every layer moves that future (and a replay pays for the moves).
    pub(crate) fn plain<'a, S, F>(
        &'a self,
        store: &'a S,
        key: &'a Key,
        fingerprint: &'a Fingerprint,
        body: F,
    ) -> tracing::instrument::Instrumented<impl Future<Output = (Result<T, E>, Disposition)> + 'a>
    where
        S: Store + ?Sized,
        F: Future<Output = Result<T, E>> + 'a,
    {
        let span = observe::span(self.options.namespace, key.digest());
        self.run_plain(store, key, fingerprint, body)
            .instrument(span)
    }

    async fn run_plain<S, F>(
        &self,
        store: &S,
        key: &Key,
        fingerprint: &Fingerprint,
        body: F,
    ) -> (Result<T, E>, Disposition)
    where
        S: Store + ?Sized,
        F: Future<Output = Result<T, E>>,
    {
        let session = &Session {
            store,
            key,
            options: &self.options,
        };
        let mut patience = Patience::new(&self.options);
        let token = loop {
            let claim = session.claim(fingerprint).await;
            match self.settle(fingerprint, claim, &mut patience).await {
                Ok(Some(Acquired::Owner(token))) => break token,
                Ok(Some(Acquired::Replay(record))) => {
                    return (self.replay(record), Disposition::Replayed);
                }
                Ok(None) => continue,
                Err(e) => {
                    let disposition = patience.disposition(&e);
                    return (self.failed(e), disposition);
                }
            }
        };
        let guard = ReleaseOnDrop {
            session,
            token: Some(token),
        };
        let result = AssertUnwindSafe(session.with_heartbeat(token, body))
            .catch_unwind()
            .await;
        guard.disarm();
        let result = match result {
            Ok(result) => result,
            Err(panic) => {
                session.release(token).await;
                self.outcome(CallOutcome::Panicked);
                std::panic::resume_unwind(panic)
            }
        };
        let result = match self.leave(&result, session.store.max_output_len()) {
            Leave::Record(output) => {
                session.record(token, output).await;
                result
            }
            Leave::Release => {
                session.release(token).await;
                self.outcome(CallOutcome::Released);
                result
            }
            Leave::Refuse(e) => {
                session.release(token).await;
                self.refused(e)
            }
        };
        (result, Disposition::Executed)
    }
}

/// One call's store operations: its key on its store, with its options.
pub(super) struct Session<'a, S: ?Sized> {
    pub(super) store: &'a S,
    pub(super) key: &'a Key,
    pub(super) options: &'a Options,
}

impl<S: Store + ?Sized> Session<'_, S> {
    async fn claim(&self, fingerprint: &Fingerprint) -> Result<Claim, StoreError> {
        let lease = self.options.lease;
        match self.store.claim_now(self.key, fingerprint, lease) {
            Some(claim) => claim,
            None => self.store.claim(self.key, fingerprint, lease).await,
        }
    }

    /// Runs the body while renewing the lease every third of it.
    async fn with_heartbeat<F: Future>(&self, token: Token, body: F) -> F::Output {
        let mut body = pin!(body);
        // A body that finishes in its first poll never arms the heartbeat's timer.
        if let Poll::Ready(output) = poll_fn(|cx| Poll::Ready(body.as_mut().poll(cx))).await {
            return output;
        }
        // Released only after the body, when the heartbeat is gone.
        let released = AtomicBool::new(false);
        let beat = pin!(self.heartbeat(token, &released));
        match select(body, beat).await {
            Either::Left((output, _)) => output,
            Either::Right((never, _)) => match never {},
        }
    }

    /// Renews the lease every third of it, until `released` is set: a claim the call has
    /// released (in a batch, before the others' records are written) is no longer its to
    /// renew, and finding it gone is not a lost lease.
    pub(super) async fn heartbeat(&self, token: Token, released: &AtomicBool) -> Infallible {
        let lease = self.options.lease;
        let period = (lease / 3).max(Duration::from_millis(1));
        let mut lost = false;
        loop {
            tokio::time::sleep(period).await;
            if lost || released.load(Ordering::Acquire) {
                continue;
            }
            match self.store.renew(self.key, token, lease).await {
                Ok(()) => {}
                // Released while the renew was on its way.
                Err(StoreError::LeaseLost) if released.load(Ordering::Acquire) => {}
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
    pub(super) async fn record(&self, token: Token, output: Output) {
        let give_up = Instant::now() + self.options.lease;
        let mut pause = FIRST_RETRY;
        loop {
            let error = match self
                .store
                .complete(self.key, token, output.clone(), self.options.ttl)
                .await
            {
                Ok(()) => return self.outcome(CallOutcome::Executed),
                Err(StoreError::LeaseLost) => {
                    tracing::warn!("lease lost: another call took the record over; not recorded");
                    return self.outcome(CallOutcome::LeaseLost);
                }
                Err(e) => e,
            };
            observe::store_error(self.options.namespace, "complete", &error);
            if Instant::now() + pause >= give_up {
                return self.outcome(CallOutcome::StoreError);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY);
        }
    }

    pub(super) async fn release(&self, token: Token) {
        match self.store.release(self.key, token).await {
            Ok(()) => {}
            Err(StoreError::LeaseLost) => self.outcome(CallOutcome::LeaseLost),
            Err(e) => observe::store_error(self.options.namespace, "release", &e),
        }
    }

    fn outcome(&self, outcome: CallOutcome) {
        observe::record(self.options.namespace, outcome);
    }
}

/// Releases the claim if the call's future is dropped before it finishes.
pub(super) struct ReleaseOnDrop<'a, S: Store + ?Sized> {
    pub(super) session: &'a Session<'a, S>,
    pub(super) token: Option<Token>,
}

impl<S: Store + ?Sized> ReleaseOnDrop<'_, S> {
    pub(super) fn disarm(mut self) {
        self.token = None;
    }
}

impl<S: Store + ?Sized> Drop for ReleaseOnDrop<'_, S> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            tracing::debug!("call cancelled; releasing its claim");
            self.session.store.release_on_drop(self.session.key, token);
        }
    }
}
