use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store, tx = transaction)]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
