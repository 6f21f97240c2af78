//! A payment charge made idempotent on Redis: the retry replays, a changed payload is refused.
//!
//! `cargo run --example redis_store --features redis` (the server at `REDIS_URL`, by default
//! `redis://127.0.0.1:6379`)
//!
//! Every process that shares the Redis server shares the records, so this holds across
//! replicas of a service too.

use idem::idempotent;
use idem::redis::RedisStore;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Clone, Serialize)]
struct ChargeRequest {
    payment_id: String,
    user_id: u64,
    amount_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charge_id: String,
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

struct Payments {
    store: RedisStore,
}

impl Payments {
    /// Records live one hour here (the default is 24h); Redis deletes them itself then.
    #[idempotent(key = req.payment_id, scope = req.user_id, store = self.store, ttl = "1h")]
    async fn charge(&self, req: ChargeRequest) -> Result<Receipt, PaymentError> {
        let n = CHARGES.fetch_add(1, Ordering::SeqCst) + 1;
        println!("charging {} cents (charge #{n})", req.amount_cents); // the card network
        Ok(Receipt {
            charge_id: format!("ch_{n}"),
            amount_cents: req.amount_cents,
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let payments = Payments {
        // One prefix per application (or environment) sharing the server.
        store: RedisStore::connect(&url)
            .await?
            .with_prefix("example:payments:")?,
    };
    let req = ChargeRequest {
        payment_id: format!("pay-{}", std::process::id()),
        user_id: 42,
        amount_cents: 2500,
    };
    let unwrap = |r: Result<Receipt, PaymentError>| r.map_err(|PaymentError::Idempotency(e)| e);

    let first = unwrap(payments.charge(req.clone()).await)?;
    println!("first call: {first:?}");

    // The client timed out and retries with the same key: the recorded receipt comes back.
    let retry = unwrap(payments.charge(req.clone()).await)?;
    println!("retry:      {retry:?} (replayed)");
    assert_eq!(retry, first);
    assert_eq!(CHARGES.load(Ordering::SeqCst), 1);

    // The same key with another amount is a client bug: refused, nothing charged.
    let changed = ChargeRequest {
        amount_cents: 9900,
        ..req
    };
    match unwrap(payments.charge(changed).await) {
        Err(idem::Error::PayloadMismatch) => println!("changed payload: refused (PayloadMismatch)"),
        other => panic!("expected PayloadMismatch, got {other:?}"),
    }
    assert_eq!(CHARGES.load(Ordering::SeqCst), 1);
    println!("charged exactly once");
    Ok(())
}
