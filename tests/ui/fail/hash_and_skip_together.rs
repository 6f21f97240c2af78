use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store, hash = cents, skip(note))]
async fn charge(
    store: &MemoryStore,
    id: u64,
    cents: u64,
    note: String,
) -> Result<u64, idem::Error> {
    Ok(id + cents + note.len() as u64)
}

fn main() {}
