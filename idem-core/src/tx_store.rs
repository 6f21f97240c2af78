//! Stores that keep their records inside the caller's database transaction.

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{Claim, Output, Store, Token};
use crate::{Fingerprint, Key, StoreError};

/// A [`Store`] that can also run the protocol inside a transaction of type
/// `Tx` (a `sqlx::Transaction` of its database).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot keep idempotency records inside a `{Tx}`",
    label = "`tx = ...` needs a SQL store of the transaction's database: `PgStore` with a \
             `Transaction<'_, Postgres>`, `SqliteStore` with SQLite, `MySqlStore` with MySQL"
)]
#[async_trait]
pub trait TxStore<Tx: Send + ?Sized>: Store {
    /// Claims inside `tx`. A concurrent claim of the key that is not committed yet blocks
    /// this one until its transaction ends, for at most `wait` (then
    /// [`StoreError::Timeout`]); then this reports what it committed, or claims. (On
    /// SQLite the wait happens earlier, at the caller's `BEGIN IMMEDIATE`.)
    async fn claim_in(
        &self,
        tx: &mut Tx,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
        wait: Duration,
    ) -> Result<Claim, StoreError>;

    /// Records `output` inside `tx` (fenced by `token`, as [`Store::complete`](crate::Store::complete)).
    async fn complete_in(
        &self,
        tx: &mut Tx,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Removes the claim inside `tx`, so that committing leaves no record.
    async fn release_in(&self, tx: &mut Tx, key: &Key, token: Token) -> Result<(), StoreError>;
}

macro_rules! forward_tx_store {
    ($($ptr:ty),*) => {$(
        #[diagnostic::do_not_recommend]
        #[async_trait]
        impl<Tx: Send + ?Sized, S: TxStore<Tx> + ?Sized> TxStore<Tx> for $ptr {
            async fn claim_in(&self, tx: &mut Tx, key: &Key, fingerprint: &Fingerprint, lease: Duration, wait: Duration)
                -> Result<Claim, StoreError> {
                (**self).claim_in(tx, key, fingerprint, lease, wait).await
            }
            async fn complete_in(&self, tx: &mut Tx, key: &Key, token: Token, output: Output, ttl: Duration)
                -> Result<(), StoreError> {
                (**self).complete_in(tx, key, token, output, ttl).await
            }
            async fn release_in(&self, tx: &mut Tx, key: &Key, token: Token) -> Result<(), StoreError> {
                (**self).release_in(tx, key, token).await
            }
        }
    )*};
}

forward_tx_store!(&S, Arc<S>, Box<S>);
