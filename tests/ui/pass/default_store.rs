//! No `store = `: the process default set with `idem::set_default_store`.
use idem::{MemoryStore, idempotent};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[idempotent(key = id)]
async fn charge(id: u64, cents: u64) -> Result<u64, idem::Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(cents)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        idem::set_default_store(MemoryStore::new());
        assert_eq!(charge(1, 100).await.unwrap(), 100);
        assert_eq!(charge(1, 100).await.unwrap(), 100);
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    });
}
