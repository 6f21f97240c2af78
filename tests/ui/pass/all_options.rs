//! Every option at once (`hash` and `skip` exclude each other, so two functions).
use idem::{MemoryStore, idempotent};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum PayError {
    Declined,
    Busy,
    Idem(String),
}

impl From<idem::Error> for PayError {
    fn from(e: idem::Error) -> Self {
        PayError::Idem(e.to_string())
    }
}

fn is_permanent(e: &PayError) -> bool {
    matches!(e, PayError::Declined)
}

#[derive(Serialize)]
struct Charge {
    payment_id: String,
    user_id: u64,
    cents: u64,
}

#[idempotent(
    key = req.payment_id,
    scope = req.user_id,
    store = store,
    hash = (req.cents, req.user_id),
    ttl = "1h",
    lease = "5s",
    on_conflict = wait,
    wait_timeout = "2s",
    errors = cache_if(is_permanent),
    name = "payments.charge",
    codec = idem::codec::Bincode,
    crate = ::idem,
)]
async fn charge(store: &MemoryStore, req: Charge, note: String) -> Result<u64, PayError> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    match req.cents {
        0 => Err(PayError::Declined),
        1 => Err(PayError::Busy),
        n => Ok(n + note.len() as u64),
    }
}

#[idempotent(
    key = id,
    store = store,
    skip(note, store),
    on_conflict = reject,
    errors = cache,
    crate = idem,
)]
async fn refund(store: &MemoryStore, id: u64, note: String) -> Result<u64, PayError> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        Err(PayError::Declined)
    } else {
        Ok(note.len() as u64)
    }
}

/// `cache_if` also takes a closure that captures nothing.
#[idempotent(key = id, store = store, errors = cache_if(|e| matches!(e, PayError::Declined)))]
async fn void(store: &MemoryStore, id: u64) -> Result<u64, PayError> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        Err(PayError::Declined)
    } else {
        Err(PayError::Busy)
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        let req = |id: &str, cents| Charge {
            payment_id: id.into(),
            user_id: 7,
            cents,
        };

        assert_eq!(charge(&store, req("p-1", 10), "ab".into()).await, Ok(12));
        // `note` is not hashed: another note replays.
        assert_eq!(charge(&store, req("p-1", 10), "abcd".into()).await, Ok(12));
        assert_eq!(RUNS.swap(0, Ordering::SeqCst), 1);

        // A permanent error is cached, a transient one released.
        assert_eq!(
            charge(&store, req("p-2", 0), "".into()).await,
            Err(PayError::Declined)
        );
        assert_eq!(
            charge(&store, req("p-2", 0), "".into()).await,
            Err(PayError::Declined)
        );
        assert_eq!(RUNS.swap(0, Ordering::SeqCst), 1);
        assert_eq!(
            charge(&store, req("p-3", 1), "".into()).await,
            Err(PayError::Busy)
        );
        assert_eq!(
            charge(&store, req("p-3", 1), "".into()).await,
            Err(PayError::Busy)
        );
        assert_eq!(RUNS.swap(0, Ordering::SeqCst), 2);

        // `errors = cache` records every error; `skip(note)` leaves the note out.
        assert_eq!(refund(&store, 0, "x".into()).await, Err(PayError::Declined));
        assert_eq!(refund(&store, 0, "y".into()).await, Err(PayError::Declined));
        assert_eq!(refund(&store, 1, "xyz".into()).await, Ok(3));
        assert_eq!(refund(&store, 1, "other".into()).await, Ok(3));
        assert_eq!(RUNS.swap(0, Ordering::SeqCst), 2);

        assert_eq!(void(&store, 0).await, Err(PayError::Declined));
        assert_eq!(void(&store, 0).await, Err(PayError::Declined));
        assert_eq!(void(&store, 1).await, Err(PayError::Busy));
        assert_eq!(void(&store, 1).await, Err(PayError::Busy));
        assert_eq!(RUNS.swap(0, Ordering::SeqCst), 3);
    });
}
