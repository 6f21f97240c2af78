//! `store = ` an `Arc<MemoryStore>` argument (borrowed, not moved: usable after the call).
use idem::{MemoryStore, idempotent};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[idempotent(key = id, store = store)]
async fn charge(store: Arc<MemoryStore>, id: u64) -> Result<u64, idem::Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(id + 1)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Arc::new(MemoryStore::new());
        assert_eq!(charge(store.clone(), 7).await.unwrap(), 8);
        assert_eq!(charge(store.clone(), 7).await.unwrap(), 8);
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    });
}
