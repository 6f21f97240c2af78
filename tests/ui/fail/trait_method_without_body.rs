use idem::idempotent;

trait Charger {
    #[idempotent(key = id)]
    async fn charge(&self, id: u64) -> Result<u64, idem::Error>;
}

fn main() {}
