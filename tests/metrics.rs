//! Counters behind the `metrics` feature count each call's outcome.
#![cfg(feature = "metrics")]

mod support;

use idem::{MemoryStore, idempotent};
use std::sync::{Arc, Mutex};
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
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct Counts(Mutex<HashMap<String, Arc<Count>>>);

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl Recorder for Counts {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let count = self
            .0
            .lock()
            .unwrap()
            .entry(key.name().to_string())
            .or_default()
            .clone();
        Counter::from_arc(count)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn outcomes_are_counted() {
    let recorder = Counts::default();
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
    let counts = recorder.0.lock().unwrap();
    let get = |name: &str| counts.get(name).map_or(0, |c| c.0.load(Ordering::SeqCst));
    assert_eq!(get("idem_executions_total"), 1);
    assert_eq!(get("idem_replays_total"), 2);
    assert_eq!(get("idem_mismatches_total"), 1);
    assert_eq!(get("idem_conflicts_total"), 0);
}

#[test]
fn evictions_are_counted() {
    let recorder = Counts::default();
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
    let counts = recorder.0.lock().unwrap();
    let counted = counts
        .get("idem_evictions_total")
        .map_or(0, |c| c.0.load(Ordering::SeqCst));
    assert!(store.evicted() >= 92, "evicted {}", store.evicted());
    assert_eq!(counted, store.evicted());
}
