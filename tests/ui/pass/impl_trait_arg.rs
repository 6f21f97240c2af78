//! An `impl Trait` argument is hashed like any other.
use idem::{MemoryStore, idempotent};
use serde::Serialize;
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[idempotent(key = id, store = store)]
async fn send(
    store: &MemoryStore,
    id: u64,
    payload: impl Serialize + Send,
) -> Result<u64, idem::Error> {
    let _ = &payload;
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(id)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        assert_eq!(send(&store, 1, [1, 2, 3]).await.unwrap(), 1);
        assert_eq!(send(&store, 1, [1, 2, 3]).await.unwrap(), 1);
        assert!(matches!(
            send(&store, 1, [9]).await,
            Err(idem::Error::PayloadMismatch)
        ));
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    });
}
