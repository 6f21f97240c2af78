use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store, wait_timeout = "5s")]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

#[idempotent(key = id, store = store, on_conflict = reject, wait_timeout = "5s")]
async fn refund(store: &MemoryStore, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
