//! What an `Err` from the body leaves behind: `errors = release | cache | cache_if(..)`.

use bytes::Bytes;

use crate::error::CodecError;
use crate::value_codec::ValueCodec;

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
