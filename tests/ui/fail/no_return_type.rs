use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store)]
async fn charge(store: &MemoryStore, id: u64) {
    let _ = id;
}

fn main() {}
