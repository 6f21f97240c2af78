//! Many calls of one function at once (`run_batch`): their claims go to the store
//! together, their bodies run concurrently, and their records go together once every body
//! has finished — what a consumer that fetches N messages at a time needs for the store to
//! cost two round trips per batch instead of two per call.

use futures_util::FutureExt;
use futures_util::future::{Either, join_all, select};
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use tracing::Instrument;

use super::Idempotent;
use super::decide::Leave;
use super::plain::{ReleaseOnDrop, Session};
use crate::error_policy::ErrorPolicy;
use crate::observe::{self, CallOutcome};
use crate::store::{Claim, Output, Store, Token};
use crate::{Fingerprint, Key, StoreError};

/// What a call of the batch does after the batch's claim.
enum Step<T, E, F> {
    /// It owns its key: run the body in the batch.
    Own(Token, F),
    /// Settled by the claim (a replay, a mismatch).
    Done(Result<T, E>),
    /// Found in progress, or the claim failed: continue on its own, as `run` would.
    Alone(F),
}

impl<T, E, P: ErrorPolicy<E>> Idempotent<T, E, P> {
    /// Runs many calls of this function at once, each as [`run`](Self::run) would — the
    /// body at most once per key, a replay of a recorded result, a refusal of another
    /// payload — with the results in the order of `calls`. What differs is the cost: the
    /// claims of every call go to the store together ([`Store::claim_batch`]), the bodies of
    /// those that own their keys run concurrently in this task, and their records go
    /// together once every body has finished ([`Store::complete_batch`]). On a SQL store
    /// that is two statements for the batch instead of two per call: for consumers that
    /// fetch many messages at a time.
    ///
    /// A call whose claim finds its key in progress (held by another call, or a duplicate
    /// in the batch), or fails, continues on its own as `run` does once the batch's records
    /// are written: a duplicate then replays its twin's result, and a key another call
    /// holds waits, is refused or fails as the options say. A record that cannot be
    /// written in the batch is retried on its own while its lease lasts. Every owned
    /// claim's lease is renewed until its record is written or the claim is released (the
    /// records wait for the slowest body). A panicking body's claim is released and the
    /// panic resumed once the others are recorded; a dropped batch releases the claims it
    /// holds.
    ///
    /// ```
    /// # extern crate idem_core as idem;
    /// use idem::{Fingerprint, Key, MemoryStore, Options, protocol::Idempotent};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), idem::Error> {
    /// let store = MemoryStore::new();
    /// let handle = Idempotent::<u64, idem::Error>::new(Options::new("orders.handle"));
    /// let messages = [("m-1", 10_u64), ("m-2", 20), ("m-1", 10)]; // m-1 redelivered
    /// let mut calls = Vec::new();
    /// for (id, amount) in messages {
    ///     let (key, fingerprint) = (Key::new("orders.handle", id)?, Fingerprint::of(&amount)?);
    ///     calls.push((key, fingerprint, async move { Ok(amount * 2) }));
    /// }
    /// let results = handle.run_batch(&store, calls).await;
    /// // The redelivery of m-1 in the same batch replays the first one's result.
    /// let results: Vec<u64> = results.into_iter().collect::<Result<_, _>>()?;
    /// assert_eq!(results, [20, 40, 20]);
    /// # Ok(()) }
    /// ```
    pub async fn run_batch<S, F>(
        &self,
        store: &S,
        calls: Vec<(Key, Fingerprint, F)>,
    ) -> Vec<Result<T, E>>
    where
        S: Store + ?Sized,
        F: Future<Output = Result<T, E>>,
    {
        let (keys, bodies): (Vec<(Key, Fingerprint)>, Vec<F>) = calls
            .into_iter()
            .map(|(key, fingerprint, body)| ((key, fingerprint), body))
            .unzip();
        let claims: Vec<(&Key, &Fingerprint)> = keys.iter().map(|(k, f)| (k, f)).collect();
        let answers = one_each(
            store.claim_batch(&claims, self.options.lease).await,
            &claims,
        );
        let steps = answers
            .into_iter()
            .zip(bodies)
            .zip(&keys)
            .map(|((claim, body), (_, fingerprint))| self.step(fingerprint, claim, body));

        let sessions: Vec<Session<'_, S>> = keys
            .iter()
            .map(|(key, _)| Session {
                store,
                key,
                options: &self.options,
            })
            .collect();
        let mut results: Vec<Option<Result<T, E>>> = Vec::with_capacity(keys.len());
        let mut owned = Vec::new();
        let mut alone = Vec::new();
        for (i, step) in steps.enumerate() {
            results.push(match step {
                Step::Done(result) => Some(result),
                Step::Own(token, body) => {
                    owned.push((i, token, body));
                    None
                }
                Step::Alone(body) => {
                    alone.push((i, body));
                    None
                }
            });
        }
        let owned_work = self.owned(&sessions, owned);
        let alone_work = join_all(alone.into_iter().map(|(i, body)| {
            let (key, fingerprint) = &keys[i];
            self.plain(store, key, fingerprint, body)
                .map(move |(result, _)| (i, result))
        }));
        // The others after the batch's records: a duplicate in the batch then replays its
        // twin's result instead of finding it in progress.
        let (owned, panic) = owned_work.await;
        let alone = alone_work.await;
        for (i, result) in owned.into_iter().chain(alone) {
            results[i] = Some(result);
        }
        if let Some(panic) = panic {
            std::panic::resume_unwind(panic);
        }
        // Without a panic, every call has its result.
        let results: Vec<Result<T, E>> = results.into_iter().flatten().collect();
        debug_assert_eq!(results.len(), keys.len());
        results
    }

    /// What the batch's claim means for one call. (Not `async`: nothing may come between
    /// the batch's claims and the guards that release them if the batch is dropped.)
    fn step<F>(
        &self,
        fingerprint: &Fingerprint,
        claim: Result<Claim, StoreError>,
        body: F,
    ) -> Step<T, E, F> {
        match claim {
            Ok(Claim::Claimed(token)) => Step::Own(token, body),
            Ok(Claim::Completed(record)) => {
                match self.check_fingerprint(fingerprint, &record.fingerprint) {
                    Ok(()) => Step::Done(self.replay(record)),
                    Err(e) => Step::Done(self.failed(e)),
                }
            }
            Ok(Claim::InProgress(_)) | Err(_) => Step::Alone(body),
        }
    }

    /// Runs the owned calls' bodies, then records their results in one batch, while every
    /// claim's lease is renewed: each call's result, and the first panic of a body.
    async fn owned<S, F>(
        &self,
        sessions: &[Session<'_, S>],
        owned: Vec<(usize, Token, F)>,
    ) -> (
        Vec<(usize, Result<T, E>)>,
        Option<Box<dyn std::any::Any + Send>>,
    )
    where
        S: Store + ?Sized,
        F: Future<Output = Result<T, E>>,
    {
        let guards: Vec<ReleaseOnDrop<'_, S>> = owned
            .iter()
            .map(|&(i, token, _)| ReleaseOnDrop {
                session: &sessions[i],
                token: Some(token),
            })
            .collect();
        let tokens: Vec<(usize, Token)> = owned.iter().map(|&(i, token, _)| (i, token)).collect();
        // Set for each claim the batch releases, so that its heartbeat stops renewing it.
        let released: Vec<AtomicBool> = tokens.iter().map(|_| AtomicBool::new(false)).collect();
        let mut work = pin!(async {
            let bodies = owned.into_iter().map(|(i, _, body)| {
                let span = observe::span(self.options.namespace, sessions[i].key.digest());
                AssertUnwindSafe(body.instrument(span)).catch_unwind()
            });
            let finished = join_all(bodies).await;
            self.record_all(sessions, &tokens, &released, finished)
                .await
        });
        let beats = async {
            let renewing = tokens.iter().zip(&released);
            join_all(
                renewing.map(|(&(i, token), released)| sessions[i].heartbeat(token, released)),
            )
            .await;
            std::future::pending::<Infallible>().await
        };
        // A batch that finishes in its first poll never arms the heartbeats' timers.
        let done = match poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
            Poll::Ready(done) => done,
            Poll::Pending => match select(work, pin!(beats)).await {
                Either::Left((done, _)) => done,
                Either::Right((never, _)) => match never {},
            },
        };
        for guard in guards {
            guard.disarm();
        }
        done
    }

    /// Leaves each finished body's result behind — the records in one batch, releases one
    /// by one — and says what each call returns.
    async fn record_all<S: Store + ?Sized>(
        &self,
        sessions: &[Session<'_, S>],
        tokens: &[(usize, Token)],
        released: &[AtomicBool],
        finished: Vec<std::thread::Result<Result<T, E>>>,
    ) -> (
        Vec<(usize, Result<T, E>)>,
        Option<Box<dyn std::any::Any + Send>>,
    ) {
        let mut results = Vec::with_capacity(finished.len());
        let mut records: Vec<(usize, Token, Output)> = Vec::new();
        let mut panic = None;
        for ((&(i, token), released), finished) in tokens.iter().zip(released).zip(finished) {
            let session = &sessions[i];
            let release = || async {
                released.store(true, Ordering::Release);
                session.release(token).await;
            };
            let result = match finished {
                Ok(result) => result,
                Err(payload) => {
                    release().await;
                    self.outcome(CallOutcome::Panicked);
                    panic.get_or_insert(payload);
                    continue;
                }
            };
            match self.leave(&result, session.store.max_output_len()) {
                Leave::Record(output) => {
                    records.push((i, token, output));
                    results.push((i, result));
                }
                Leave::Release => {
                    release().await;
                    self.outcome(CallOutcome::Released);
                    results.push((i, result));
                }
                Leave::Refuse(e) => {
                    release().await;
                    results.push((i, self.refused(e)));
                }
            }
        }
        if let Some(&(first, ..)) = records.first() {
            let store = sessions[first].store;
            let batch: Vec<(&Key, Token, Output)> = records
                .iter()
                .map(|(i, token, output)| (sessions[*i].key, *token, output.clone()))
                .collect();
            let written = one_each(store.complete_batch(&batch, self.options.ttl).await, &batch);
            for ((i, token, output), written) in records.into_iter().zip(written) {
                match written {
                    Ok(()) => self.outcome(CallOutcome::Executed),
                    Err(StoreError::LeaseLost) => {
                        tracing::warn!(
                            "lease lost: another call took the record over; not recorded"
                        );
                        self.outcome(CallOutcome::LeaseLost);
                    }
                    // Retried on its own, while its lease lasts.
                    Err(e) => {
                        observe::store_error(self.options.namespace, "complete", &e);
                        sessions[i].record(token, output).await;
                    }
                }
            }
        }
        (results, panic)
    }
}

/// A batch's answers, exactly one per item: where a store answered fewer (a bug of its
/// own), the rest are errors — handled as a failed call is — never a result moved to
/// another call.
fn one_each<A, I>(
    mut answers: Vec<Result<A, StoreError>>,
    items: &[I],
) -> Vec<Result<A, StoreError>> {
    answers.truncate(items.len());
    answers.resize_with(items.len(), || {
        Err(StoreError::backend(
            "batch",
            "the store answered fewer items than it was given",
        ))
    });
    answers
}
