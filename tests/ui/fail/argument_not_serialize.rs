use idem::{MemoryStore, idempotent};

struct Card {
    number: String,
}

#[idempotent(key = id, store = store)]
async fn charge(store: &MemoryStore, id: u64, card: Card) -> Result<u64, idem::Error> {
    Ok(id + card.number.len() as u64)
}

fn main() {}
