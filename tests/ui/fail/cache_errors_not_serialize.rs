use idem::{MemoryStore, idempotent};

#[derive(Debug)]
enum PayError {
    Idem(idem::Error),
}

impl From<idem::Error> for PayError {
    fn from(e: idem::Error) -> Self {
        PayError::Idem(e)
    }
}

#[idempotent(key = id, store = store, errors = cache)]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64, PayError> {
    Ok(id)
}

fn main() {}
