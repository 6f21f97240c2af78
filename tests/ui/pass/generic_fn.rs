//! A generic function: the payload type is a type parameter.
use idem::{MemoryStore, idempotent};
use serde::Serialize;
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[idempotent(key = id, store = store)]
async fn send<T: Serialize + Send>(
    store: &MemoryStore,
    id: u64,
    payload: T,
) -> Result<usize, idem::Error>
where
    T: std::fmt::Debug,
{
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("{payload:?}").len())
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        assert_eq!(send(&store, 1, vec![1u8, 2]).await.unwrap(), 6);
        assert_eq!(send(&store, 1, vec![1u8, 2]).await.unwrap(), 6);
        assert_eq!(send(&store, 2, "hi").await.unwrap(), 4);
        assert_eq!(RUNS.load(Ordering::SeqCst), 2);
    });
}
