//! An `#[async_trait]` impl (Send futures), with `self` in the key, scope and hash
//! expressions; the future is spawned to prove it is `Send`.
use async_trait::async_trait;
use idem::{MemoryStore, idempotent};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Clone, Serialize)]
struct Charge {
    payment_id: String,
    cents: u64,
}

#[async_trait]
trait Charger {
    fn store(&self) -> &MemoryStore;

    async fn charge(&self, req: Charge) -> Result<u64, idem::Error>;

    /// A default method of an `#[async_trait]` trait.
    #[idempotent(key = id, store = self.store())]
    async fn refund(&self, id: u64) -> Result<u64, idem::Error> {
        Ok(id)
    }
}

struct Payments {
    tenant: String,
    store: Arc<MemoryStore>,
    runs: AtomicU32,
}

#[async_trait]
impl Charger for Payments {
    fn store(&self) -> &MemoryStore {
        &self.store
    }

    #[idempotent(
        key = req.payment_id,
        scope = self.tenant,
        hash = (&self.tenant, &req),
        store = self.store
    )]
    async fn charge(&self, req: Charge) -> Result<u64, idem::Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        Ok(req.cents)
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let p = Arc::new(Payments {
            tenant: "t-1".into(),
            store: Arc::new(MemoryStore::new()),
            runs: AtomicU32::new(0),
        });
        let req = Charge {
            payment_id: "p-1".into(),
            cents: 500,
        };
        let (p2, r2) = (p.clone(), req.clone());
        let spawned = tokio::spawn(async move { p2.charge(r2).await });
        assert_eq!(spawned.await.unwrap().unwrap(), 500);
        assert_eq!(p.charge(req.clone()).await.unwrap(), 500);
        assert_eq!(p.runs.load(Ordering::SeqCst), 1);
        let dyn_charger: &dyn Charger = &*p;
        assert_eq!(dyn_charger.charge(req).await.unwrap(), 500);
        assert_eq!(p.runs.load(Ordering::SeqCst), 1);
        assert_eq!(p.refund(3).await.unwrap(), 3);
        assert_eq!(p.refund(3).await.unwrap(), 3);
        let refund = tokio::spawn(async move { p.refund(4).await });
        assert_eq!(refund.await.unwrap().unwrap(), 4);
    });
}
