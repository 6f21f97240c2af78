use idem::{MemoryStore, idempotent};

// `hash = ...` says what the fingerprint covers; `tx` must still name the transaction.
#[idempotent(key = id, store = store, hash = id, tx = transaction)]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

#[idempotent(key = id, store = store, hash = id, tx = note)]
async fn refund(store: &MemoryStore, id: u64, note: String) -> Result<u64, idem::Error> {
    Ok(id + note.len() as u64)
}

fn main() {}
