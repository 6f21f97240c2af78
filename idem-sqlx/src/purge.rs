//! Deleting expired records in bounded batches.

use idem_core::StoreError;
use std::future::Future;

/// Rows a purge deletes per statement, so no delete holds locks for long.
pub(crate) const PURGE_BATCH: i64 = 1000;

/// Runs `batch` (one delete of at most [`PURGE_BATCH`] expired rows, returning how many it
/// deleted) until a batch comes back short; returns the total.
pub(crate) async fn in_batches<F, Fut>(mut batch: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, StoreError>>,
{
    let mut purged = 0;
    loop {
        let deleted = batch().await?;
        purged += deleted;
        if deleted < PURGE_BATCH as u64 {
            return Ok(purged);
        }
    }
}
