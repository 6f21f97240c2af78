use idem::{MemoryStore, idempotent};

#[idempotent(key = id, store = store)]
async fn charge(store: &MemoryStore, id: u64) -> u64 {
    id
}

#[idempotent(key = id, store = store)]
async fn refund(store: &MemoryStore, id: u64) -> Option<u64> {
    Some(id)
}

struct Receipt;

#[idempotent(key = id, store = store)]
async fn void(store: &MemoryStore, id: u64) -> Receipt {
    let _ = id;
    Receipt
}

fn main() {}
