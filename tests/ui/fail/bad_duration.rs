use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store, ttl = "forever")]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

#[idempotent(key = id, store = store, lease = 30)]
async fn refund(store: &MemoryStore, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
