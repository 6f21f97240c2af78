//! What the macro's options turn into: durations, the conflict policy and the error policy.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use std::time::Duration;

use crate::codec::{self, Codec, Shape, ShapeCell};
use crate::error::CodecError;

/// The settings of one idempotent function.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The namespace of its records: `module_path!()::fn_name`, or `name = "…"`.
    pub namespace: &'static str,
    /// How long a completed record is kept.
    pub ttl: Duration,
    /// How long an in-progress claim lives without a heartbeat.
    pub lease: Duration,
    /// What a concurrent duplicate gets.
    pub on_conflict: OnConflict,
    /// With [`OnConflict::Wait`], how long to wait before [`Error::WaitTimeout`](crate::Error::WaitTimeout).
    pub wait_timeout: Duration,
}

impl Options {
    /// The defaults: TTL 24h, lease 30s, reject concurrent duplicates, wait at most 10s.
    pub const fn new(namespace: &'static str) -> Self {
        Options {
            namespace,
            ttl: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(30),
            on_conflict: OnConflict::Reject,
            wait_timeout: Duration::from_secs(10),
        }
    }
}

/// What a call gets when another call with the same key is in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// [`Error::InProgress`](crate::Error::InProgress) at once (the default; HTTP 409).
    Reject,
    /// Wait for the other call: replay its result, or run if it released or crashed.
    Wait,
}

/// Encodes and decodes values of one type with one codec, as plain function pointers and
/// the type's [`Shape`] (built once, checked where the type is written; see
/// [`ValueCodec::new`]).
pub struct ValueCodec<T> {
    encode: fn(&T, Shape) -> Result<Bytes, CodecError>,
    decode: fn(&[u8], Shape) -> Result<T, CodecError>,
    shape: Shape,
}

impl<T> Clone for ValueCodec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ValueCodec<T> {}

impl<T: Serialize + DeserializeOwned> ValueCodec<T> {
    /// `T` through codec `C` (its shape from the global cache of [`Shape::of`]).
    pub fn new<C: Codec>() -> Self {
        Self::with_shape::<C>(Shape::of::<T>(C::HUMAN_READABLE))
    }

    /// `T` through codec `C`, its shape cached in `cell` (a `static` of the call site:
    /// what `#[idempotent]` builds, at the cost of an atomic load per call).
    #[inline]
    pub fn cached<C: Codec>(cell: &ShapeCell) -> Self {
        Self::with_shape::<C>(cell.get::<T>(C::HUMAN_READABLE))
    }

    #[inline]
    fn with_shape<C: Codec>(shape: Shape) -> Self {
        ValueCodec {
            encode: codec::encode_shaped::<C, T>,
            decode: codec::decode_shaped::<C, T>,
            shape,
        }
    }
}

impl<T> ValueCodec<T> {
    /// Encodes a value, header (format tag, shape, checksum) first.
    pub fn encode(&self, value: &T) -> Result<Bytes, CodecError> {
        (self.encode)(value, self.shape)
    }

    /// Decodes what [`encode`](Self::encode) wrote; another shape, another codec or a
    /// changed byte is an error.
    pub fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        (self.decode)(bytes, self.shape)
    }

    /// The shape its records carry.
    pub fn shape(&self) -> Shape {
        self.shape
    }
}

/// What an `Err` from the body leaves behind (`errors = release | cache | cache_if(..)`).
pub trait ErrorPolicy<E> {
    /// `Some(bytes)` to record the error, `None` to release the claim.
    fn record(&self, error: &E) -> Option<Result<Bytes, CodecError>>;
    /// Decodes a recorded error.
    fn replay(&self, bytes: &[u8]) -> Result<E, CodecError>;
}

/// `errors = release` (the default): an error is not recorded, so a retry runs again.
#[derive(Clone, Copy, Debug)]
pub struct Release;

impl<E> ErrorPolicy<E> for Release {
    fn record(&self, _: &E) -> Option<Result<Bytes, CodecError>> {
        None
    }

    fn replay(&self, _: &[u8]) -> Result<E, CodecError> {
        Err(CodecError::new(
            "idem",
            "replay a cached error",
            "the record holds an error but this function does not cache errors \
             (it was recorded with `errors = cache`); wait for its TTL or purge it",
        ))
    }
}

/// `errors = cache`: every error is recorded and replayed like a success.
pub struct CacheErrors<E>(pub ValueCodec<E>);

impl<E> ErrorPolicy<E> for CacheErrors<E> {
    fn record(&self, error: &E) -> Option<Result<Bytes, CodecError>> {
        Some(self.0.encode(error))
    }

    fn replay(&self, bytes: &[u8]) -> Result<E, CodecError> {
        self.0.decode(bytes)
    }
}

/// `errors = cache_if(is_permanent)`: errors for which the predicate says "permanent" are
/// recorded, the others released.
pub struct CacheIf<E> {
    /// Says which errors are recorded.
    pub is_permanent: fn(&E) -> bool,
    /// How recorded errors are stored.
    pub codec: ValueCodec<E>,
}

impl<E> ErrorPolicy<E> for CacheIf<E> {
    fn record(&self, error: &E) -> Option<Result<Bytes, CodecError>> {
        (self.is_permanent)(error).then(|| self.codec.encode(error))
    }

    fn replay(&self, bytes: &[u8]) -> Result<E, CodecError> {
        self.codec.decode(bytes)
    }
}
