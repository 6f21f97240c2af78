use idem::idempotent;
use idem::MemoryStore;
use sqlx::{Postgres, Transaction};

#[idempotent(key = id, store = store, tx = tx)]
async fn charge(store: &MemoryStore, tx: Transaction<'static, Postgres>, id: u64) -> Result<u64, idem::Error> {
    drop(tx);
    Ok(id)
}

fn main() {}
