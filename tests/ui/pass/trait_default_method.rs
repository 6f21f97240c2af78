//! A trait's default method body with `#[idempotent]`; the store comes from a trait method.
use idem::{MemoryStore, idempotent};
use std::sync::atomic::{AtomicU32, Ordering};

trait Charger {
    fn store(&self) -> &MemoryStore;
    fn runs(&self) -> &AtomicU32;

    #[idempotent(key = id, store = self.store())]
    async fn charge(&self, id: u64, cents: u64) -> Result<u64, idem::Error> {
        self.runs().fetch_add(1, Ordering::SeqCst);
        Ok(cents)
    }
}

struct Payments {
    store: MemoryStore,
    runs: AtomicU32,
}

impl Charger for Payments {
    fn store(&self) -> &MemoryStore {
        &self.store
    }
    fn runs(&self) -> &AtomicU32 {
        &self.runs
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let p = Payments {
            store: MemoryStore::new(),
            runs: AtomicU32::new(0),
        };
        assert_eq!(p.charge(1, 100).await.unwrap(), 100);
        assert_eq!(p.charge(1, 100).await.unwrap(), 100);
        assert_eq!(p.runs.load(Ordering::SeqCst), 1);
    });
}
