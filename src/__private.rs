//! Paths the `#[idempotent]` expansion names. Not public API: it may change in any release.

pub use core::concat;
pub use core::module_path;
pub use core::result::Result;
pub use core::time::Duration;
pub use idem_core::__private::{DefaultStore, ShapeCell, execute, execute_in_tx};
pub use idem_core::codec::{Bincode, Codec};
pub use idem_core::protocol::{CacheErrors, CacheIf, Idempotent, Release, ValueCodec};
pub use idem_core::{Error, FingerprintBuilder, Key, OnConflict, Options, Store};

/// Splits a function's return type into its `Ok` and `Err` types.
#[diagnostic::on_unimplemented(
    message = "#[idempotent] functions must return `Result<T, E>`, not `{Self}`",
    label = "the recorded output is the `T` of `Result<T, E>`"
)]
pub trait IdemResult: Sized {
    /// `T`.
    type Ok;
    /// `E`.
    type Err;
    /// The value as a `Result` (the identity; for a return type written as an alias).
    fn into_result(self) -> core::result::Result<Self::Ok, Self::Err>;
    /// The inverse of [`into_result`](Self::into_result).
    fn from_result(result: core::result::Result<Self::Ok, Self::Err>) -> Self;
}

impl<T, E> IdemResult for core::result::Result<T, E> {
    type Ok = T;
    type Err = E;
    #[inline]
    fn into_result(self) -> Self {
        self
    }
    #[inline]
    fn from_result(result: Self) -> Self {
        result
    }
}

/// Makes the return type checked where the user wrote it.
pub const fn assert_result<R: IdemResult>() {}

/// `Serialize`, for what is recorded: the `T` of `Result<T, E>`, and `E` with `errors = cache`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be recorded: it is not `Serialize`",
    label = "#[idempotent] stores this type (the `T` of `Result<T, E>`, or the `E` with \
             `errors = cache`): add `#[derive(serde::Serialize)]` to it"
)]
pub trait Recordable: serde::Serialize {}

#[diagnostic::do_not_recommend]
impl<T: serde::Serialize> Recordable for T {}

/// `DeserializeOwned`, for what is replayed (the same types as [`Recordable`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be replayed: it is not `Deserialize`",
    label = "#[idempotent] replays this type (the `T` of `Result<T, E>`, or the `E` with \
             `errors = cache`): add `#[derive(serde::Deserialize)]` to it"
)]
pub trait Replayable: serde::de::DeserializeOwned {}

#[diagnostic::do_not_recommend]
impl<T: serde::de::DeserializeOwned> Replayable for T {}

/// `From<idem::Error>`, for the `E` of `Result<T, E>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot carry idem's errors: implement `From<idem::Error>` for it",
    label = "the error type of an #[idempotent] function must implement `From<idem::Error>`"
)]
pub trait FromIdemError: From<Error> {}

#[diagnostic::do_not_recommend]
impl<E: From<Error>> FromIdemError for E {}

/// `Serialize`, for what the fingerprint covers.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be fingerprinted: #[idempotent] hashes the arguments through \
               serde, so each must be `Serialize`",
    label = "derive `serde::Serialize` for this type, or leave it out of the fingerprint with \
             `skip(...)` or `hash = ...`"
)]
pub trait Hashed: serde::Serialize {}

#[diagnostic::do_not_recommend]
impl<T: serde::Serialize + ?Sized> Hashed for T {}

/// `T: Serialize + DeserializeOwned`, checked where the user wrote `T`; its shape cached in
/// the function's own `static`.
#[inline]
pub fn output<C: Codec, T: Recordable + Replayable>(shape: &ShapeCell) -> ValueCodec<T> {
    ValueCodec::cached::<C>(shape)
}

/// `E: From<idem::Error>`, checked where the user wrote `E`.
#[inline]
pub fn error_from<E: FromIdemError>() -> fn(Error) -> E {
    E::from
}

/// `errors = cache`: `E: Serialize + DeserializeOwned`, checked where the user wrote `E`.
#[inline]
pub fn cache_errors<C: Codec, E: Recordable + Replayable>(shape: &ShapeCell) -> CacheErrors<E> {
    CacheErrors(ValueCodec::cached::<C>(shape))
}

/// `errors = cache_if(pred)`.
#[inline]
pub fn cache_if<C: Codec, E: Recordable + Replayable>(
    shape: &ShapeCell,
    is_permanent: fn(&E) -> bool,
) -> CacheIf<E> {
    CacheIf {
        is_permanent,
        codec: ValueCodec::cached::<C>(shape),
    }
}

/// Hashes one argument; an argument that is not `Serialize` fails here, at its own span.
#[inline]
pub fn hash_arg<T: Hashed + ?Sized>(builder: &mut FingerprintBuilder, value: &T) {
    builder.arg(value);
}

/// `Store`, for what `store = ...` names.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an idem store",
    label = "`store = ...` takes an `idem::Store` (like `MemoryStore` or a SQL store), a \
             reference to one, or an `Arc` of one"
)]
pub trait IsStore: Store {}

#[diagnostic::do_not_recommend]
impl<S: Store + ?Sized> IsStore for S {}

/// The store named by `store = ...`: a reference to a `Store`, an `Arc` of one, ...
#[inline]
pub fn store<S: IsStore + ?Sized>(store: &S) -> &S {
    store
}

/// `IntoKey`, for what `key = ...` and `scope = ...` name.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an idempotency key: it does not implement `idem::IntoKey`",
    label = "a key is made of strings, integers, tuples of those or an `Option` of one: use \
             one of its fields (`key = req.id`), or implement `idem::IntoKey` for it"
)]
pub trait IsKey: idem_core::IntoKey {}

#[diagnostic::do_not_recommend]
impl<K: idem_core::IntoKey + ?Sized> IsKey for K {}

/// `Key::new`, with the key checked where the user wrote it.
#[inline]
pub fn key<K: IsKey + ?Sized>(namespace: &'static str, key: &K) -> Result<Key, Error> {
    Key::new(namespace, key)
}

/// `Key::scoped`, with the scope and key checked where the user wrote them.
#[inline]
pub fn scoped_key<S: IsKey + ?Sized, K: IsKey + ?Sized>(
    namespace: &'static str,
    scope: &S,
    key: &K,
) -> Result<Key, Error> {
    Key::scoped(namespace, scope, key)
}

/// `tx = ...`: the store keeps its records inside a `Tx`, checked where `store =` is.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot keep idempotency records inside a `{Tx}`",
    label = "`tx = ...` needs a SQL store of the transaction's database: `PgStore` with a \
             `Transaction<'_, Postgres>`, `SqliteStore` with SQLite, `MySqlStore` with MySQL"
)]
pub trait IsTxStore<Tx: Send + ?Sized>: idem_core::TxStore<Tx> {}

#[diagnostic::do_not_recommend]
impl<Tx: Send + ?Sized, S: idem_core::TxStore<Tx> + ?Sized> IsTxStore<Tx> for S {}

/// The store of a transactional function, checked against the transaction's type.
#[inline]
pub fn tx_store<Tx: Send + ?Sized, S: IsTxStore<Tx> + ?Sized>(store: &S) -> &S {
    store
}
