//! `MemoryStore` passes the store conformance suite.

use std::sync::Arc;

use idem_core::MemoryStore;
use idem_core::testing;

// One test per check, each on its own store.
idem_core::store_conformance_tests!(Arc::new(MemoryStore::new()));

/// Outside the suite's list (it needs `release_on_drop`, which `MemoryStore` has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_batches_leave_nothing_behind() {
    testing::cancelled_batches_leave_nothing_behind(&Arc::new(MemoryStore::new())).await;
}

/// Every check in one test, through `run_all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all() {
    testing::run_all(Arc::new(MemoryStore::new())).await;
}

/// Two whole suites at once on one store: the checks' keys never collide, as when several
/// test processes share one database table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_suites_share_one_store() {
    let store = Arc::new(MemoryStore::new());
    tokio::join!(
        testing::run_all(store.clone()),
        testing::run_all(store.clone()),
    );
}

// The whole suite again on a store far smaller than what the checks record: capacity
// pressure must evict only completed records, never a claim.
idem_core::store_conformance_tests!(small_capacity, Arc::new(MemoryStore::with_capacity(64)));
