use idem::idempotent;
use std::collections::HashMap;

#[idempotent(key = id, store = store)]
async fn charge(store: &HashMap<u64, u64>, id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
