//! Transactional mode: the claim, the body's own writes and the recorded result commit in
//! the caller's database transaction, together or not at all.
//!
//! The claim, the body and the record all go through the caller's transaction, and the
//! caller commits. A concurrent duplicate blocks on the key's uncommitted row until the
//! first transaction ends (SQLite serializes whole write transactions instead: begin them
//! with `BEGIN IMMEDIATE`, and the duplicate waits there): after a commit it replays, after
//! a rollback it claims. A crash rolls everything back, so there is no lease to wait out and
//! no half-done effect.

use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use tracing::Instrument;

use super::Idempotent;
use super::decide::{Acquired, Leave, Patience};
use crate::error_policy::ErrorPolicy;
use crate::observe::{self, CallOutcome};
use crate::options::Options;
use crate::store::Token;
use crate::tx_store::TxStore;
use crate::{Error, Fingerprint, Key, StoreError};

impl<T, E, P: ErrorPolicy<E>> Idempotent<T, E, P> {
    /// Runs `body` on `tx` at most once per key, with the claim and the record in the same
    /// transaction (see the module docs); the caller commits.
    ///
    /// If the record cannot be written the result is an error, so that the caller rolls
    /// back rather than commit effects without their record. After any `Err` from idem
    /// (mismatch, in progress, wait timeout, store) the caller should roll back.
    pub async fn run_in_tx<S, Tx, F>(
        &self,
        store: &S,
        tx: &mut Tx,
        key: Key,
        fingerprint: Fingerprint,
        body: F,
    ) -> Result<T, E>
    where
        S: TxStore<Tx> + ?Sized,
        Tx: Send + ?Sized,
        F: AsyncFnOnce(&mut Tx) -> Result<T, E>,
    {
        self.run_lending(store, tx, key, fingerprint, |tx| async move {
            (body(&mut *tx).await, tx)
        })
        .await
    }

    /// [`run_in_tx`](Self::run_in_tx) with a body that borrows the transaction for the
    /// whole call and hands it back. Its bound names one lifetime, not every lifetime
    /// (`for<'a> AsyncFnOnce(&'a mut Tx)`): rustc cannot prove a future `Send` that holds an
    /// async closure of a higher-ranked bound over a `Transaction<'_, DB>` argument, which
    /// is what `#[idempotent(tx = ...)]` functions have.
    pub(crate) async fn run_lending<'t, S, Tx, F, B>(
        &self,
        store: &S,
        tx: &'t mut Tx,
        key: Key,
        fingerprint: Fingerprint,
        body: F,
    ) -> Result<T, E>
    where
        S: TxStore<Tx> + ?Sized,
        Tx: Send + ?Sized,
        F: FnOnce(&'t mut Tx) -> B,
        B: Future<Output = (Result<T, E>, &'t mut Tx)>,
    {
        let span = observe::span(self.options.namespace, key.digest());
        async {
            let token = match self.claim_in(store, &mut *tx, &key, &fingerprint).await {
                Ok(Acquired::Owner(token)) => token,
                Ok(Acquired::Replay(record)) => return self.replay(record),
                Err(e) => return self.failed(e),
            };
            let (result, tx) = body(tx).await;
            match self.leave(&result, store.max_output_len()) {
                Leave::Record(output) => {
                    let ttl = self.options.ttl;
                    match store.complete_in(tx, &key, token, output, ttl).await {
                        Ok(()) => {
                            self.outcome(CallOutcome::Executed);
                            result
                        }
                        Err(e) => self.store_failed(e),
                    }
                }
                Leave::Release => {
                    release_in(store, tx, &key, token, &self.options).await;
                    self.outcome(CallOutcome::Released);
                    result
                }
                Leave::Refuse(e) => {
                    release_in(store, tx, &key, token, &self.options).await;
                    self.refused(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Claims the key inside `tx`, waiting for a concurrent owner as the options say.
    async fn claim_in<S, Tx>(
        &self,
        store: &S,
        tx: &mut Tx,
        key: &Key,
        fingerprint: &Fingerprint,
    ) -> Result<Acquired, Error>
    where
        S: TxStore<Tx> + ?Sized,
        Tx: Send + ?Sized,
    {
        let (lease, wait) = (self.options.lease, self.options.wait_timeout);
        let mut patience = Patience::new(&self.options);
        loop {
            let claim = store.claim_in(tx, key, fingerprint, lease, wait).await;
            if let Err(StoreError::Timeout { .. }) = claim {
                self.outcome(CallOutcome::WaitTimeout);
                return Err(Error::WaitTimeout);
            }
            if let Some(acquired) = self.settle(fingerprint, claim, &mut patience).await? {
                return Ok(acquired);
            }
        }
    }
}

async fn release_in<S, Tx>(store: &S, tx: &mut Tx, key: &Key, token: Token, options: &Options)
where
    S: TxStore<Tx> + ?Sized,
    Tx: Send + ?Sized,
{
    if let Err(e) = store.release_in(tx, key, token).await {
        observe::store_error(options.namespace, "release", &e);
    }
}

/// Transactional mode without building an [`Idempotent`]: runs `body` on `tx` at most once
/// per key, with the claim and the record in the same transaction. Outputs use bincode;
/// errors are not recorded (the caller rolls back, or commits nothing for the key).
///
/// ```ignore
/// let mut tx = pool.begin().await?; // SQLite: pool.begin_with("BEGIN IMMEDIATE")
/// let key = idem::Key::new("payments.transfer", &cmd.id)?;
/// let fingerprint = idem::Fingerprint::of(&cmd)?;
/// let receipt = idem::run_in_tx(&store, &mut tx, key, fingerprint, &idem::Options::new("payments.transfer"),
///     async |tx| move_money(tx, &cmd).await).await?;
/// tx.commit().await?;
/// ```
pub async fn run_in_tx<S, Tx, T, E, F>(
    store: &S,
    tx: &mut Tx,
    key: Key,
    fingerprint: Fingerprint,
    options: &Options,
    body: F,
) -> Result<T, E>
where
    S: TxStore<Tx> + ?Sized,
    Tx: Send + ?Sized,
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    F: AsyncFnOnce(&mut Tx) -> Result<T, E>,
{
    Idempotent::new(*options)
        .run_in_tx(store, tx, key, fingerprint, body)
        .await
}
