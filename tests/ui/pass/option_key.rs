//! `key = ` an `Option<String>`: `None` is `Error::MissingKey` and the body does not run.
use idem::{MemoryStore, idempotent};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[idempotent(key = idempotency_key, store = store)]
async fn charge(
    store: &MemoryStore,
    idempotency_key: Option<String>,
    cents: u64,
) -> Result<u64, idem::Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(cents)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        assert_eq!(charge(&store, Some("k".into()), 5).await.unwrap(), 5);
        assert_eq!(charge(&store, Some("k".into()), 5).await.unwrap(), 5);
        assert!(matches!(
            charge(&store, None, 5).await,
            Err(idem::Error::MissingKey)
        ));
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    });
}
