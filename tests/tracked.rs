//! `idem::Tracked<T>`: an `#[idempotent]` output that tells the call that ran the body from
//! the calls that got its recorded result back.

use idem::{MemoryStore, Tracked, idempotent};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    id: String,
    cents: u64,
}

#[idempotent(key = id, store = store, name = "tests.tracked.charge", skip(runs))]
async fn charge(
    store: &MemoryStore,
    runs: &AtomicU32,
    id: &str,
    cents: u64,
) -> Result<Tracked<Receipt>, idem::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    let id = id.to_owned();
    Ok(Tracked::new(Receipt { id, cents }))
}

/// The same function as it was before it returned `Tracked`: same name, plain output.
#[idempotent(key = id, store = store, name = "tests.tracked.charge", skip(runs))]
async fn charge_untracked(
    store: &MemoryStore,
    runs: &AtomicU32,
    id: &str,
    cents: u64,
) -> Result<Receipt, idem::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    let id = id.to_owned();
    Ok(Receipt { id, cents })
}

#[tokio::test]
async fn the_first_call_is_fresh_and_every_retry_is_replayed() {
    let (store, runs) = (MemoryStore::new(), AtomicU32::new(0));
    let first = charge(&store, &runs, "c-1", 500).await.unwrap();
    assert!(!first.was_replayed(), "the call that ran the body");
    for _ in 0..3 {
        let retry = charge(&store, &runs, "c-1", 500).await.unwrap();
        assert!(retry.was_replayed(), "a retry gets the record back");
        assert_eq!(retry, first);
        assert_eq!(retry.cents, 500);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn records_of_the_plain_output_replay_as_tracked_and_back() {
    let (store, runs) = (MemoryStore::new(), AtomicU32::new(0));
    let plain = charge_untracked(&store, &runs, "c-2", 700).await.unwrap();
    let tracked = charge(&store, &runs, "c-2", 700).await.unwrap();
    assert!(tracked.was_replayed());
    assert_eq!(tracked.clone().into_inner(), plain);
    let fresh = charge(&store, &runs, "c-3", 900).await.unwrap();
    assert!(!fresh.was_replayed());
    let back = charge_untracked(&store, &runs, "c-3", 900).await.unwrap();
    assert_eq!(back, *fresh);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
