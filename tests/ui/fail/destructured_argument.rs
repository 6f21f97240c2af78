use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store)]
async fn charge(
    store: &MemoryStore,
    id: u64,
    (cents, fee): (u64, u64),
) -> Result<u64, idem::Error> {
    Ok(id + cents + fee)
}

fn main() {}
