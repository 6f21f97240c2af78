use idem::{MemoryStore, idempotent};

#[idempotent(store = store)]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

#[idempotent]
async fn refund(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
