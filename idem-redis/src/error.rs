//! Store errors made from Redis errors and from replies no script of ours sends.

use idem_core::StoreError;
use std::fmt::Display;

/// Maps a Redis error to a store error naming the operation.
pub(crate) fn backend(op: &'static str) -> impl Fn(redis::RedisError) -> StoreError + Copy {
    move |e| StoreError::backend(op, e)
}

/// A reply or a record no script of ours would produce (a foreign value under our prefix,
/// say): a clean error naming what is wrong, never a panic or a guess.
pub(crate) fn malformed(op: &'static str, what: impl Display) -> StoreError {
    StoreError::backend(op, format!("malformed reply from Redis: {what}"))
}
