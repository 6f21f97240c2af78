//! An inherent `&self` method with `store = self.store` (a field, borrowed) and the key
//! taken from a borrowed argument's field.
use idem::{MemoryStore, idempotent};
use serde::Serialize;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Serialize)]
struct Charge {
    payment_id: String,
    cents: u64,
}

struct Payments {
    store: MemoryStore,
    runs: AtomicU32,
}

impl Payments {
    #[idempotent(key = req.payment_id, store = self.store)]
    async fn charge(&self, req: Charge) -> Result<u64, idem::Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(req.cents)
    }

    #[idempotent(key = req.payment_id, store = &self.store)]
    async fn refund(&self, req: &Charge) -> Result<u64, idem::Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(req.cents)
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let payments = Payments {
            store: MemoryStore::new(),
            runs: AtomicU32::new(0),
        };
        let req = || Charge {
            payment_id: "p-1".into(),
            cents: 500,
        };
        assert_eq!(payments.charge(req()).await.unwrap(), 500);
        assert_eq!(payments.charge(req()).await.unwrap(), 500);
        assert_eq!(payments.runs.load(Ordering::SeqCst), 1);
        // Another function: another namespace, so the same key runs once more.
        assert_eq!(payments.refund(&req()).await.unwrap(), 500);
        assert_eq!(payments.refund(&req()).await.unwrap(), 500);
        assert_eq!(payments.runs.load(Ordering::SeqCst), 2);
    });
}
