use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store, key = other)]
async fn charge(store: &MemoryStore, id: u64, other: u64) -> Result<u64, idem::Error> {
    Ok(id + other)
}

fn main() {}
