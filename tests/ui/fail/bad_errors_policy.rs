use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store, errors = ignore)]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

#[idempotent(key = id, store = store, errors = retry(3))]
async fn refund(store: &MemoryStore, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
