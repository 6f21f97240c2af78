use idem::idempotent;

#[idempotent(key = id)]
const LIMIT: u64 = 10;

fn main() {}
