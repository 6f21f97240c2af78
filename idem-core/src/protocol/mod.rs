//! The protocol of one idempotent call — claim, replay or run, record — in its two modes.
//!
//! [`Idempotent`] is the value that says what a function does with its results; it runs
//! the protocol on a [`Store`](crate::Store) ([`Idempotent::run`], plain mode) or inside
//! the caller's database transaction ([`Idempotent::run_in_tx`], transactional mode).
//! `#[idempotent]` builds one per call; code without the macro (an HTTP layer, a consumer
//! loop) builds its own. What a store's answer means is decided once, in `decide`, for
//! both modes.

mod batch;
mod decide;
mod plain;
pub(crate) mod tx;

use serde::{Serialize, de::DeserializeOwned};

use crate::Error;
use crate::codec::Bincode;
use crate::observe::{self, CallOutcome};
use crate::options::Options;

pub use crate::error_policy::{CacheErrors, CacheIf, ErrorPolicy, Release};
pub use crate::value_codec::ValueCodec;
pub use decide::Disposition;

/// One idempotent function: its [`Options`], how its output is stored, what an `Err`
/// leaves behind, and how idem's own errors become its error type `E`.
///
/// ```
/// # extern crate idem_core as idem;
/// use idem::{Fingerprint, Key, MemoryStore, Options, protocol::Idempotent};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), idem::Error> {
/// let store = MemoryStore::new();
/// let charge = Idempotent::<u64, idem::Error>::new(Options::new("payments.charge"));
/// let cents = 500_u64;
/// for _ in 0..2 {
///     let key = Key::new("payments.charge", "p-1")?;
///     let fingerprint = Fingerprint::of(&cents)?;
///     // The second call replays the first's result; the body runs once.
///     let charged = charge.run(&store, key, fingerprint, async { Ok(cents) }).await?;
///     assert_eq!(charged, 500);
/// }
/// # Ok(()) }
/// ```
pub struct Idempotent<T, E, P = Release> {
    options: Options,
    output: ValueCodec<T>,
    policy: P,
    into_error: fn(Error) -> E,
}

impl<T: Serialize + DeserializeOwned, E: From<Error>> Idempotent<T, E> {
    /// Outputs in bincode, errors released (not recorded), idem's errors through `E::from`.
    pub fn new(options: Options) -> Self {
        Idempotent::with(options, ValueCodec::new::<Bincode>(), Release, E::from)
    }
}

impl<T, E, P: ErrorPolicy<E>> Idempotent<T, E, P> {
    /// Every part given: the output codec, the error policy
    /// ([`Release`], [`CacheErrors`], [`CacheIf`]) and the conversion of idem's errors.
    pub fn with(
        options: Options,
        output: ValueCodec<T>,
        policy: P,
        into_error: fn(Error) -> E,
    ) -> Self {
        Idempotent {
            options,
            output,
            policy,
            into_error,
        }
    }

    /// The same, with another error policy.
    pub fn errors<Q: ErrorPolicy<E>>(self, policy: Q) -> Idempotent<T, E, Q> {
        Idempotent::with(self.options, self.output, policy, self.into_error)
    }

    /// Its options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    fn outcome(&self, outcome: CallOutcome) {
        observe::record(self.options.namespace, outcome);
    }
}

/// What `#[idempotent]` calls: the protocol with the key and fingerprint as the expansion
/// evaluated them (an error there is the call's error, and the body does not run).
pub(crate) mod expansion {
    use std::future::Future;

    use super::Idempotent;
    use crate::error_policy::ErrorPolicy;
    use crate::{CodecError, Error, Fingerprint, Key, Store, TxStore};

    /// Plain mode.
    pub async fn execute<S, T, E, P, F>(
        store: &S,
        key: Result<Key, Error>,
        fingerprint: Result<Fingerprint, CodecError>,
        spec: &Idempotent<T, E, P>,
        body: F,
    ) -> Result<T, E>
    where
        S: Store + ?Sized,
        P: ErrorPolicy<E>,
        F: Future<Output = Result<T, E>>,
    {
        // Matched in place, not through a helper returning both: each move of the key is a
        // copy, and a replay is short enough to notice.
        let key = key.map_err(spec.into_error)?;
        let fingerprint = fingerprint.map_err(|e| (spec.into_error)(e.into()))?;
        spec.plain(store, &key, &fingerprint, body).await.0
    }

    /// Transactional mode (`tx = ...`).
    pub async fn execute_in_tx<'t, S, Tx, T, E, P, F, B>(
        store: &S,
        tx: &'t mut Tx,
        key: Result<Key, Error>,
        fingerprint: Result<Fingerprint, CodecError>,
        spec: &Idempotent<T, E, P>,
        body: F,
    ) -> Result<T, E>
    where
        S: TxStore<Tx> + ?Sized,
        Tx: Send + ?Sized,
        P: ErrorPolicy<E>,
        F: FnOnce(&'t mut Tx) -> B,
        B: Future<Output = (Result<T, E>, &'t mut Tx)>,
    {
        let key = key.map_err(spec.into_error)?;
        let fingerprint = fingerprint.map_err(|e| (spec.into_error)(e.into()))?;
        spec.run_lending(store, tx, key, fingerprint, body).await
    }
}
