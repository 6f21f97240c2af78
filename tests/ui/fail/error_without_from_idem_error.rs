use idem::{MemoryStore, idempotent};

#[derive(Debug)]
struct PayError;

#[idempotent(key = id, store = store)]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64, PayError> {
    Ok(id)
}

fn main() {}
