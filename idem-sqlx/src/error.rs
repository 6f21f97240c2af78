//! Store errors made from database errors and from rows no store wrote.

use idem_core::StoreError;
use std::fmt::Display;

/// Maps a sqlx error to a store error naming the operation.
pub(crate) fn backend(op: &'static str) -> impl Fn(sqlx::Error) -> StoreError + Copy {
    move |e| StoreError::backend(op, e)
}

/// A record no store wrote (a manual edit, a foreign schema): a clean error naming what is
/// wrong with it, e.g. `corrupt("claim", "expires_at is +infinity")`.
pub(crate) fn corrupt(op: &'static str, what: impl Display) -> StoreError {
    StoreError::backend(op, format!("corrupt record: {what}"))
}
