//! Counters behind the `metrics` feature count each call's outcome.
#![cfg(feature = "metrics")]

mod support;

use idem::{MemoryStore, idempotent};
use support::counters::Counters;
use support::{AppError, Calls};

#[idempotent(key = key, store = store, skip(calls, fail))]
async fn observed(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
    amount: u32,
    fail: bool,
) -> Result<u32, AppError> {
    calls.hit();
    if fail {
        Err(AppError::Declined)
    } else {
        Ok(amount)
    }
}
#[test]
fn outcomes_are_counted() {
    let recorder = Counters::default();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = MemoryStore::new();
            let calls = Calls::default();
            observed(&store, &calls, "a", 1, false).await.unwrap();
            observed(&store, &calls, "a", 1, false).await.unwrap();
            observed(&store, &calls, "a", 1, false).await.unwrap();
            observed(&store, &calls, "a", 2, false).await.unwrap_err();
        });
    });
    let get = |name: &str| recorder.total(name, &[]);
    assert_eq!(get("idem_executions_total"), 1);
    assert_eq!(get("idem_replays_total"), 2);
    assert_eq!(get("idem_mismatches_total"), 1);
    assert_eq!(get("idem_conflicts_total"), 0);
}

#[test]
fn evictions_are_counted() {
    let recorder = Counters::default();
    let store = MemoryStore::with_capacity(8);
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let calls = Calls::default();
            for i in 0..100 {
                observed(&store, &calls, &format!("key-{i}"), 1, false)
                    .await
                    .unwrap();
            }
            // Lets moka finish its pending evictions (on this thread, under the recorder).
            idem::Store::purge_expired(&store).await.unwrap();
        });
    });
    let counted = recorder.total("idem_evictions_total", &[]);
    assert!(store.evicted() >= 92, "evicted {}", store.evicted());
    assert_eq!(counted, store.evicted());
}
