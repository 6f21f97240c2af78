//! One type through one codec: what a function's output (or cached error) is stored as.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::codec::{self, Codec, Shape, ShapeCell};
use crate::error::CodecError;

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
