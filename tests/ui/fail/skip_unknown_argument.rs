use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store, skip(note, nonce))]
async fn charge(store: &MemoryStore, id: u64, note: String) -> Result<u64, idem::Error> {
    Ok(id + note.len() as u64)
}

fn main() {}
