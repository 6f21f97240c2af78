use idem::{MemoryStore, idempotent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum PayError {
    Declined,
    Idem(String),
}

impl From<idem::Error> for PayError {
    fn from(e: idem::Error) -> Self {
        PayError::Idem(e.to_string())
    }
}

fn is_permanent(e: PayError) -> bool {
    matches!(e, PayError::Declined)
}

#[idempotent(key = id, store = store, errors = cache_if(is_permanent))]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64, PayError> {
    Ok(id)
}

fn main() {}
