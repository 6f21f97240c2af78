use idem::idempotent;

#[idempotent(key = id)]
const fn charge(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {}
