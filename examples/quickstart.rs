//! A payment handler made idempotent with one attribute.
//!
//! `cargo run --example quickstart`

use idem::{MemoryStore, idempotent};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Serialize)]
struct ChargeRequest {
    payment_id: String,
    user_id: u64,
    amount_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charge_id: u64,
    amount_cents: u64,
}

#[derive(Debug)]
enum PaymentError {
    /// A retry, a duplicate in flight, another payload under the same key, ...
    Idempotency(idem::Error),
}

impl From<idem::Error> for PaymentError {
    fn from(e: idem::Error) -> Self {
        PaymentError::Idempotency(e)
    }
}

struct Payments {
    store: MemoryStore,
    charges_made: AtomicU64,
}

impl Payments {
    /// Charges the card once per (user, payment id), however often it is called.
    #[idempotent(key = req.payment_id, scope = req.user_id, store = self.store)]
    async fn charge(&self, req: ChargeRequest) -> Result<Receipt, PaymentError> {
        let charge_id = self.charges_made.fetch_add(1, Ordering::SeqCst) + 1;
        println!(
            "  charging {} cents (charge #{charge_id})",
            req.amount_cents
        );
        Ok(Receipt {
            charge_id,
            amount_cents: req.amount_cents,
        })
    }
}

#[tokio::main]
async fn main() {
    let payments = Payments {
        store: MemoryStore::new(),
        charges_made: AtomicU64::new(0),
    };
    let request = ChargeRequest {
        payment_id: "pay_8f14e45f".into(),
        user_id: 42,
        amount_cents: 1999,
    };

    println!("first call:");
    let first = payments.charge(request.clone()).await.expect("charge");
    println!("  -> {first:?}");

    println!("client retries after a timeout:");
    let retry = payments.charge(request.clone()).await.expect("replay");
    println!("  -> {retry:?} (replayed, no second charge)");
    assert_eq!(first, retry);

    println!("a retry with another amount under the same key:");
    let tampered = ChargeRequest {
        amount_cents: 99_999,
        ..request
    };
    match payments.charge(tampered).await {
        Err(PaymentError::Idempotency(e @ idem::Error::PayloadMismatch)) => {
            println!("  -> refused: {e} (HTTP {})", e.http_status())
        }
        other => panic!("expected a payload mismatch, got {other:?}"),
    }

    assert_eq!(payments.charges_made.load(Ordering::SeqCst), 1);
    println!("card charged exactly once");
}
