use idem::{MemoryStore, idempotent};
use serde::Serialize;

#[derive(Serialize)]
struct PaymentId(u64);

#[idempotent(key = id, store = store)]
async fn charge(store: &MemoryStore, id: PaymentId) -> Result<u64, idem::Error> {
    Ok(id.0)
}

#[idempotent(key = (user, id), scope = user.tenant, store = store)]
async fn refund(store: &MemoryStore, user: User, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

#[derive(Serialize)]
struct User {
    tenant: Vec<u8>,
}

fn main() {}
