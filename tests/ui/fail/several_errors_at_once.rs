use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store, ttl = "1 fortnight", on_conflict = maybe)]
fn charge(store: &MemoryStore, id: u64, (a, b): (u64, u64)) -> Result<u64, idem::Error> {
    Ok(id + a + b)
}

fn main() {}
