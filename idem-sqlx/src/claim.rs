//! What every dialect's claim shares: how often it tries before giving up.

use idem_core::StoreError;

/// How many times a claim retries when the row changed between its statements.
pub(crate) const CLAIM_ATTEMPTS: usize = 8;

/// A claim that tried [`CLAIM_ATTEMPTS`] times and found the row changed every time.
pub(crate) fn kept_changing() -> StoreError {
    StoreError::backend("claim", "the record kept changing under concurrent claims")
}
