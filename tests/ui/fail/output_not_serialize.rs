use idem::{MemoryStore, idempotent};

struct Receipt {
    cents: u64,
}

#[idempotent(key = id, store = store)]
async fn charge(store: &MemoryStore, id: u64) -> Result<Receipt, idem::Error> {
    Ok(Receipt { cents: id })
}

fn main() {}
