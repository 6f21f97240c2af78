//! A return type written as a bare alias of `Result` (no `Result` in its name).
use idem::{MemoryStore, idempotent};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Receipt(u64);

#[derive(Debug)]
struct ApiError(#[allow(dead_code)] String);

impl From<idem::Error> for ApiError {
    fn from(e: idem::Error) -> Self {
        ApiError(e.to_string())
    }
}

type Reply = Result<Receipt, ApiError>;

#[idempotent(key = id, store = store)]
async fn charge(store: &MemoryStore, id: u64) -> Reply {
    RUNS.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        return Err(ApiError("zero".into()));
    }
    Ok(Receipt(id))
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        assert_eq!(charge(&store, 2).await.unwrap(), Receipt(2));
        assert_eq!(charge(&store, 2).await.unwrap(), Receipt(2));
        assert!(charge(&store, 0).await.is_err());
        assert_eq!(RUNS.load(Ordering::SeqCst), 2);
    });
}
