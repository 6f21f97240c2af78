//! For store implementors: the [`Store`] trait every backend implements, and the values it
//! exchanges. A backend passes the conformance suite (`idem::testing`, feature `testing`);
//! one that can keep records inside a database transaction also implements
//! [`TxStore`](crate::TxStore).

use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use crate::key::KeyDigest;
use crate::{Fingerprint, Key, StoreError};

/// Where idempotency records live.
///
/// A record is absent, in progress (a claim with a lease and a fencing [`Token`]) or
/// completed (an [`Output`] kept for a TTL); an expired record of either kind counts as
/// absent. Every implementation runs the conformance suite (`idem::testing`).
#[async_trait]
pub trait Store: Send + Sync {
    /// One atomic operation: claims the key if no live record exists, else reports the live
    /// record. A replay of a completed record must not write.
    ///
    /// Cancel-safe: if the returned future is dropped at any await point, no claim may
    /// outlive it by more than a short cleanup (well under a second) — a claim the store
    /// applied after the caller stopped listening must be released by the store itself.
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError>;

    /// [`claim`](Self::claim), answered at once without a future, by a store that can
    /// (one that keeps its records in this process, like `MemoryStore`). The protocol asks
    /// here first and awaits `claim` only on `None` (the default): the future
    /// `#[async_trait]` boxes around every call is a measurable part of an in-memory replay
    /// (BENCHMARKS.md). A store that answers must answer as `claim` would, from the same
    /// records (the conformance check `claim_now_agrees_with_claim`).
    fn claim_now(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Option<Result<Claim, StoreError>> {
        let _ = (key, fingerprint, lease);
        None
    }

    /// Extends the lease of the claim `token` to `lease` from now
    /// ([`StoreError::LeaseLost`] if the claim is no longer this token's).
    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError>;

    /// Records `output` for `ttl`, only while `token` still owns the claim
    /// ([`StoreError::LeaseLost`] otherwise, and nothing is written).
    ///
    /// Idempotent for its owner: if `token` already completed the record (a retry after a
    /// lost reply), it is `Ok(())` and the record stays as first written.
    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Removes the claim `token` holds, so that the next call runs again
    /// ([`StoreError::LeaseLost`] if another call owns the record now).
    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError>;

    /// [`claim`](Self::claim) for each of `claims`, all with `lease`: one answer per claim,
    /// in order, each what its own `claim` would have answered among concurrent ones (of
    /// two claims of one key, one claims it and the other finds it in progress). For
    /// [`Idempotent::run_batch`](crate::protocol::Idempotent::run_batch). By default the
    /// claims run concurrently; a store that can claim many keys in one round trip (the SQL
    /// stores: one multi-row statement) overrides it. Cancel-safe as `claim` is.
    async fn claim_batch(
        &self,
        claims: &[(&Key, &Fingerprint)],
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        // Each answer is held by a guard until the whole batch returns: a batch dropped
        // after some of its claims were answered releases those.
        let claims = claims.iter().map(|&(key, fp)| async move {
            let claim = self.claim(key, fp, lease).await;
            Answered {
                store: self,
                key,
                claim: Some(claim),
            }
        });
        let answered = futures_util::future::join_all(claims).await;
        answered.into_iter().filter_map(Answered::take).collect()
    }

    /// [`complete`](Self::complete) for each of `records` (a key, its token, its output),
    /// all with `ttl`: one answer per record, in order, each what its own `complete` would
    /// have answered. By default they run concurrently; the SQL stores send one multi-row
    /// statement.
    async fn complete_batch(
        &self,
        records: &[(&Key, Token, Output)],
        ttl: Duration,
    ) -> Vec<Result<(), StoreError>> {
        let records = records
            .iter()
            .map(|(key, token, output)| self.complete(key, *token, output.clone(), ttl));
        futures_util::future::join_all(records).await
    }

    /// Starts releasing a claim whose call was cancelled, without waiting (called from
    /// `Drop`). Best effort; by default nothing happens and the lease bounds the damage.
    fn release_on_drop(&self, key: &Key, token: Token) {
        let _ = (key, token);
    }

    /// Deletes expired records; returns how many.
    async fn purge_expired(&self) -> Result<u64, StoreError>;

    /// Whether the backend deletes expired records by itself (Redis' key expiry), so that
    /// [`purge_expired`](Self::purge_expired) has nothing to do and returns 0. The
    /// conformance suite holds such a store to that instead of to counting what it purged.
    fn expires_records_itself(&self) -> bool {
        false
    }

    /// The largest [`Output::bytes`] this store can record. The executor refuses a larger
    /// output before `complete` (an `Error::Codec`, and the claim is released) rather than
    /// hold a claim it could never complete. Stores with a server-side limit learn it from
    /// the server (and may return a safe lower bound until they have).
    fn max_output_len(&self) -> usize {
        crate::codec::MAX_ENCODED_LEN
    }
}

/// One answer of a default [`Store::claim_batch`], until the batch returns it; dropped
/// before (the batch was cancelled), it releases the claim it holds.
struct Answered<'a, S: Store + ?Sized> {
    store: &'a S,
    key: &'a Key,
    claim: Option<Result<Claim, StoreError>>,
}

impl<S: Store + ?Sized> Answered<'_, S> {
    fn take(mut self) -> Option<Result<Claim, StoreError>> {
        self.claim.take()
    }
}

impl<S: Store + ?Sized> Drop for Answered<'_, S> {
    fn drop(&mut self) {
        if let Some(Ok(Claim::Claimed(token))) = self.claim.take() {
            self.store.release_on_drop(self.key, token);
        }
    }
}

/// What [`Store::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// No live record existed: the caller owns a new in-progress record.
    Claimed(Token),
    /// A completed record: replay it (after checking its fingerprint).
    Completed(Record),
    /// Another call owns a live in-progress record.
    InProgress(Busy),
}

/// A fencing token: identifies one claim of a key; a later claim of the same key gets
/// another token, and operations with the old one are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(u64);

impl Token {
    /// A token from its stored value.
    pub fn new(value: u64) -> Self {
        Token(value)
    }

    /// The stored value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Whether the recorded output is the body's `Ok` or a cached `Err`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The body returned `Ok`.
    Ok,
    /// The body returned `Err` and the function caches errors.
    Err,
}

/// A recorded output: the codec-tagged bytes of the `Ok` value or of the cached `Err`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Ok or Err.
    pub outcome: Outcome,
    /// The encoded value, starting with its codec tag.
    pub bytes: Bytes,
}

/// A completed record as a store returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the request that produced it.
    pub fingerprint: Fingerprint,
    /// The recorded output.
    pub output: Output,
}

/// A live in-progress record owned by another call.
pub struct Busy {
    /// The fingerprint of the request in progress (a different one is a payload mismatch).
    pub fingerprint: Fingerprint,
    /// Roughly how long until its lease expires, if the store knows.
    pub lease_remaining: Option<Duration>,
    /// Resolves when the record changes, where the store can notify in process; `None`
    /// means the caller polls.
    pub waiter: Option<Waiter>,
}

impl fmt::Debug for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Busy")
            .field("fingerprint", &self.fingerprint)
            .field("lease_remaining", &self.lease_remaining)
            .field("waiter", &self.waiter.is_some())
            .finish()
    }
}

/// A future that resolves when an in-progress record completes, is released or goes away.
pub struct Waiter(Pin<Box<dyn Future<Output = ()> + Send>>);

impl Waiter {
    /// Wraps a notification future.
    pub fn new(notified: impl Future<Output = ()> + Send + 'static) -> Self {
        Waiter(Box::pin(notified))
    }
}

impl Future for Waiter {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// The boxed future every `Store` method returns (what `#[async_trait]` generates).
type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;
/// The boxed future of the batch methods.
type Batch<'a, T> = Pin<Box<dyn Future<Output = Vec<Result<T, StoreError>>> + Send + 'a>>;

// Pointers to a store are stores. Written without `#[async_trait]` so that they hand back the
// inner store's boxed future instead of boxing it a second time on every call.
macro_rules! forward_store {
    ($($ptr:ty),*) => {$(
        impl<S: Store + ?Sized> Store for $ptr {
            fn claim<'life0, 'life1, 'life2, 'async_trait>(
                &'life0 self,
                key: &'life1 Key,
                fingerprint: &'life2 Fingerprint,
                lease: Duration,
            ) -> Boxed<'async_trait, Claim>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                'life2: 'async_trait,
                Self: 'async_trait,
            {
                (**self).claim(key, fingerprint, lease)
            }

            fn renew<'life0, 'life1, 'async_trait>(
                &'life0 self,
                key: &'life1 Key,
                token: Token,
                lease: Duration,
            ) -> Boxed<'async_trait, ()>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                (**self).renew(key, token, lease)
            }

            fn complete<'life0, 'life1, 'async_trait>(
                &'life0 self,
                key: &'life1 Key,
                token: Token,
                output: Output,
                ttl: Duration,
            ) -> Boxed<'async_trait, ()>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                (**self).complete(key, token, output, ttl)
            }

            fn release<'life0, 'life1, 'async_trait>(
                &'life0 self,
                key: &'life1 Key,
                token: Token,
            ) -> Boxed<'async_trait, ()>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                (**self).release(key, token)
            }

            fn claim_now(
                &self,
                key: &Key,
                fingerprint: &Fingerprint,
                lease: Duration,
            ) -> Option<Result<Claim, StoreError>> {
                (**self).claim_now(key, fingerprint, lease)
            }

            fn claim_batch<'life0, 'life1, 'life2, 'life3, 'async_trait>(
                &'life0 self,
                claims: &'life1 [(&'life2 Key, &'life3 Fingerprint)],
                lease: Duration,
            ) -> Batch<'async_trait, Claim>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                'life2: 'async_trait,
                'life3: 'async_trait,
                Self: 'async_trait,
            {
                (**self).claim_batch(claims, lease)
            }

            fn complete_batch<'life0, 'life1, 'life2, 'async_trait>(
                &'life0 self,
                records: &'life1 [(&'life2 Key, Token, Output)],
                ttl: Duration,
            ) -> Batch<'async_trait, ()>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                'life2: 'async_trait,
                Self: 'async_trait,
            {
                (**self).complete_batch(records, ttl)
            }

            fn release_on_drop(&self, key: &Key, token: Token) {
                (**self).release_on_drop(key, token)
            }

            fn max_output_len(&self) -> usize {
                (**self).max_output_len()
            }

            fn expires_records_itself(&self) -> bool {
                (**self).expires_records_itself()
            }

            fn purge_expired<'life0, 'async_trait>(&'life0 self) -> Boxed<'async_trait, u64>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                (**self).purge_expired()
            }
        }
    )*};
}

forward_store!(&S, Arc<S>, Box<S>);
