use idem::{MemoryStore, idempotent};

// The body is not parsed by the macro: rustc reports the syntax error itself, where it is.
#[idempotent(key = id, store = store)]
async fn charge(store: &MemoryStore, id: u64) -> Result<u64, idem::Error> {
    let cents = id * ;
    Ok(cents)
}

fn main() {}
