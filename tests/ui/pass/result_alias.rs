//! A one-argument `Result<T>` alias, as anyhow-style crates define.
use idem::{MemoryStore, idempotent};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
struct MyError(#[allow(dead_code)] String);

impl From<idem::Error> for MyError {
    fn from(e: idem::Error) -> Self {
        MyError(e.to_string())
    }
}

type Result<T> = std::result::Result<T, MyError>;

#[idempotent(key = id, store = store)]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(id * 3)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        assert_eq!(charge(&store, 2).await.unwrap(), 6);
        assert_eq!(charge(&store, 2).await.unwrap(), 6);
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    });
}
