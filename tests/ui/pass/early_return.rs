//! A body with an early `return` and `?`: both go through the protocol (an `Ok` from an
//! early return is recorded, an `Err` from `?` released).
use idem::{MemoryStore, idempotent};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, PartialEq)]
enum AppError {
    Parse,
    Idem,
}

impl From<idem::Error> for AppError {
    fn from(_: idem::Error) -> Self {
        AppError::Idem
    }
}

impl From<std::num::ParseIntError> for AppError {
    fn from(_: std::num::ParseIntError) -> Self {
        AppError::Parse
    }
}

#[idempotent(key = id, store = store)]
async fn parse(store: &MemoryStore, id: u64, text: String) -> Result<u64, AppError> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    if text.is_empty() {
        return Ok(0);
    }
    let n: u64 = text.parse()?;
    Ok(n)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        assert_eq!(parse(&store, 1, "".into()).await, Ok(0));
        assert_eq!(parse(&store, 1, "".into()).await, Ok(0));
        assert_eq!(RUNS.swap(0, Ordering::SeqCst), 1);
        assert_eq!(parse(&store, 2, "x".into()).await, Err(AppError::Parse));
        assert_eq!(parse(&store, 2, "x".into()).await, Err(AppError::Parse));
        assert_eq!(RUNS.swap(0, Ordering::SeqCst), 2);
        assert_eq!(parse(&store, 3, "42".into()).await, Ok(42));
        assert_eq!(parse(&store, 3, "42".into()).await, Ok(42));
        assert_eq!(RUNS.swap(0, Ordering::SeqCst), 1);
    });
}
