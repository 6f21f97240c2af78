//! A free function with `store = ` a `&MemoryStore` argument.
use idem::{MemoryStore, idempotent};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[idempotent(key = id, store = store)]
async fn charge(store: &MemoryStore, id: String, cents: u64) -> Result<u64, idem::Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(cents * 2)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        assert_eq!(charge(&store, "p-1".into(), 5).await.unwrap(), 10);
        assert_eq!(charge(&store, "p-1".into(), 5).await.unwrap(), 10);
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
        assert!(matches!(
            charge(&store, "p-1".into(), 6).await,
            Err(idem::Error::PayloadMismatch)
        ));
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    });
}
