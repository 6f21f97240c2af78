//! Two replicas of a payment service race on the same request, on PostgreSQL.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run --example postgres_store --features postgres`
//!
//! Both replicas receive the same charge (a load balancer retried it). The store is the
//! single source of truth, so exactly one of them charges; the other waits and replays the
//! receipt.

use idem::idempotent;
use idem::sqlx::PgStore;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Clone, Serialize)]
struct ChargeRequest {
    payment_id: String,
    user_id: u64,
    amount_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charged_by: String,
    amount_cents: u64,
}

#[derive(Debug)]
enum PaymentError {
    Idempotency(idem::Error),
}

impl From<idem::Error> for PaymentError {
    fn from(e: idem::Error) -> Self {
        PaymentError::Idempotency(e)
    }
}

static CHARGES: AtomicU32 = AtomicU32::new(0);

struct Replica {
    name: &'static str,
    store: PgStore,
}

impl Replica {
    #[idempotent(key = req.payment_id, scope = req.user_id, store = self.store, on_conflict = wait)]
    async fn charge(&self, req: ChargeRequest) -> Result<Receipt, PaymentError> {
        CHARGES.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await; // the card network
        Ok(Receipt {
            charged_by: self.name.into(),
            amount_cents: req.amount_cents,
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL=postgres://…")?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        // Pinging on every acquire costs a round trip per call.
        .test_before_acquire(false)
        .connect(&url)
        .await?;
    let store = PgStore::new(pool);
    store.migrate().await?;

    let a = Replica {
        name: "replica-a",
        store: store.clone(),
    };
    let b = Replica {
        name: "replica-b",
        store,
    };
    let payment_id = format!("pay-{}", std::process::id());
    let req = ChargeRequest {
        payment_id,
        user_id: 42,
        amount_cents: 2500,
    };
    let (ra, rb) = tokio::join!(a.charge(req.clone()), b.charge(req));
    let unwrap = |r: Result<Receipt, PaymentError>| r.map_err(|PaymentError::Idempotency(e)| e);
    let (ra, rb) = (unwrap(ra)?, unwrap(rb)?);
    println!("replica-a got {ra:?}");
    println!("replica-b got {rb:?}");
    assert_eq!(ra, rb);
    assert_eq!(CHARGES.load(Ordering::SeqCst), 1);
    println!("charged exactly once, by {}", ra.charged_by);
    Ok(())
}
