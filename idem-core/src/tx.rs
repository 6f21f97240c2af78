//! Transactional mode: the claim, the body's own writes and the recorded result commit in
//! the caller's database transaction, together or not at all.
//!
//! The protocol is split around the body so that the body can use the transaction freely:
//! [`tx_start`] claims (or replays) inside the transaction, the body runs, [`tx_finish`]
//! records the result (or removes the claim) inside the same transaction, and the caller
//! commits. A concurrent duplicate blocks on the key's uncommitted row until the first
//! transaction ends (SQLite serializes whole write transactions instead: begin them with
//! `BEGIN IMMEDIATE`, and the duplicate waits there): after a commit it replays, after a
//! rollback it claims. A crash rolls everything back, so there is no lease to wait out and
//! no half-done effect.

use async_trait::async_trait;
use serde::{Serialize, de::DeserializeOwned};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use crate::codec::Bincode;
use crate::executor::{Acquired, Call, Patience, fits};
use crate::observe::{self, CallOutcome};
use crate::policy::{ErrorPolicy, Options, Release, ValueCodec};
use crate::store::{Claim, Outcome, Output, Store, Token};
use crate::{CodecError, Error, Fingerprint, Key, StoreError};

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

/// What [`tx_start`] decided.
pub enum TxStart<T, E> {
    /// This call owns the key: run the body on the transaction, then [`tx_finish`].
    Run(TxCall),
    /// The result without running the body: a replay, or an error (mismatch, in progress,
    /// wait timeout, store). After an error the caller should roll back.
    Done(Result<T, E>),
}

/// A claim held inside a transaction, between [`tx_start`] and [`tx_finish`].
pub struct TxCall {
    key: Key,
    token: Token,
    span: tracing::Span,
}

/// Claims the key inside `tx`, or returns the recorded result. See the module docs.
#[allow(clippy::too_many_arguments)]
pub async fn tx_start<S, Tx, P, T, E>(
    store: &S,
    tx: &mut Tx,
    key: Result<Key, Error>,
    fingerprint: Result<Fingerprint, CodecError>,
    options: &Options,
    output: &ValueCodec<T>,
    policy: &P,
    into_error: fn(Error) -> E,
) -> TxStart<T, E>
where
    S: TxStore<Tx> + ?Sized,
    Tx: Send + ?Sized,
    P: ErrorPolicy<E>,
{
    let (key, fingerprint) = match (key, fingerprint) {
        (Ok(key), Ok(fingerprint)) => (key, fingerprint),
        (Err(e), _) => return TxStart::Done(Err(into_error(e))),
        (_, Err(e)) => return TxStart::Done(Err(into_error(e.into()))),
    };
    let span = observe::span(options.namespace, key.digest());
    let call = Call {
        store,
        key: &key,
        fingerprint: &fingerprint,
        options,
    };
    let acquired = async {
        let mut patience = Patience::new(options);
        loop {
            let claim = store
                .claim_in(tx, &key, &fingerprint, options.lease, options.wait_timeout)
                .await;
            if let Err(StoreError::Timeout { .. }) = claim {
                call.outcome(CallOutcome::WaitTimeout);
                return Err(Error::WaitTimeout);
            }
            if let Some(acquired) = call.settle(claim, &mut patience).await? {
                return Ok(acquired);
            }
        }
    }
    .instrument(span.clone())
    .await;
    match acquired {
        Ok(Acquired::Owner(token)) => TxStart::Run(TxCall { key, token, span }),
        Ok(Acquired::Replay(record)) => TxStart::Done(
            span.in_scope(|| call.replay(output, policy, record))
                .unwrap_or_else(|e| Err(into_error(e))),
        ),
        Err(e) => TxStart::Done(Err(into_error(e))),
    }
}

/// Records the body's result inside `tx` (or removes the claim, as the error policy says)
/// and returns it. If the record cannot be written the result is an error, so that the
/// caller rolls back rather than commit effects without their record.
#[allow(clippy::too_many_arguments)]
pub async fn tx_finish<S, Tx, P, T, E>(
    store: &S,
    tx: &mut Tx,
    call: TxCall,
    result: Result<T, E>,
    options: &Options,
    output: &ValueCodec<T>,
    policy: &P,
    into_error: fn(Error) -> E,
) -> Result<T, E>
where
    S: TxStore<Tx> + ?Sized,
    Tx: Send + ?Sized,
    P: ErrorPolicy<E>,
{
    let TxCall { key, token, span } = call;
    let record = |outcome: CallOutcome| observe::record(options.namespace, outcome);
    async {
        let recorded = match &result {
            Ok(value) => output.encode(value).map(|bytes| (Outcome::Ok, bytes)),
            Err(error) => match policy.record(error) {
                Some(encoded) => encoded.map(|bytes| (Outcome::Err, bytes)),
                None => {
                    release_in(store, tx, &key, token, options).await;
                    record(CallOutcome::Released);
                    return result;
                }
            },
        };
        let max = store.max_output_len();
        let recorded = recorded.and_then(|(outcome, bytes)| Ok((outcome, fits(bytes, max)?)));
        let (outcome, bytes) = match recorded {
            Ok(encoded) => encoded,
            Err(e) => {
                release_in(store, tx, &key, token, options).await;
                record(CallOutcome::CodecError);
                return Err(into_error(Error::Codec(e)));
            }
        };
        match store
            .complete_in(tx, &key, token, Output { outcome, bytes }, options.ttl)
            .await
        {
            Ok(()) => {
                record(CallOutcome::Executed);
                result
            }
            Err(e) => {
                record(CallOutcome::StoreError);
                Err(into_error(Error::Store(e)))
            }
        }
    }
    .instrument(span)
    .await
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

/// Transactional mode without the macro: runs `body` on `tx` at most once per key, with
/// the claim and the record in the same transaction. Outputs use bincode; errors are not
/// recorded (the caller rolls back, or commits nothing for the key).
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
    let output = ValueCodec::<T>::new::<Bincode>();
    let call = match tx_start(
        store,
        tx,
        Ok(key),
        Ok(fingerprint),
        options,
        &output,
        &Release,
        E::from,
    )
    .await
    {
        TxStart::Run(call) => call,
        TxStart::Done(result) => return result,
    };
    let result = body(&mut *tx).await;
    tx_finish(store, tx, call, result, options, &output, &Release, E::from).await
}
