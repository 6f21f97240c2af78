use idem::{MemoryStore, idempotent};
use sqlx::{Postgres, Transaction};

// MemoryStore cannot keep its records inside a database transaction.
#[idempotent(key = id, store = store, tx = tx)]
async fn charge(store: &MemoryStore, tx: &mut Transaction<'_, Postgres>, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
