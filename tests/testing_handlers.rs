//! README, "Testing your handlers": proving a handler of your own idempotent with
//! `idem::testing` — duplicates, concurrent retries, a store that loses replies, and a
//! cancelled first attempt. Each test counts the handler's real effect (a ledger of
//! charges) and compares every answer.

use idem::testing::{Duplicates, Fault, FaultyStore, Op};
use idem::{MemoryStore, Store, idempotent};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    payment_id: String,
    cents: u64,
    charge_no: usize,
}

#[derive(Debug, PartialEq)]
enum PayError {
    /// Another attempt of this payment is running, the store failed, ...: retry.
    Retry(String),
    /// Refused for good (another payload under this key, ...).
    Refused(String),
}

impl From<idem::Error> for PayError {
    fn from(e: idem::Error) -> Self {
        if e.is_retryable() {
            PayError::Retry(e.to_string())
        } else {
            PayError::Refused(e.to_string())
        }
    }
}

struct Payments {
    store: Arc<dyn Store>,
    /// The effect to happen once per payment: what the card network charged.
    charged: Mutex<Vec<(String, u64)>>,
}

impl Payments {
    fn new(store: impl Store + 'static) -> Self {
        Payments {
            store: Arc::new(store),
            charged: Mutex::new(Vec::new()),
        }
    }

    #[idempotent(key = payment_id, store = self.store, lease = "300ms")]
    async fn charge(&self, payment_id: &str, cents: u64) -> Result<Receipt, PayError> {
        tokio::time::sleep(Duration::from_millis(50)).await; // the card network
        let mut charged = self.charged.lock().unwrap();
        charged.push((payment_id.to_owned(), cents));
        Ok(Receipt {
            payment_id: payment_id.to_owned(),
            cents,
            charge_no: charged.len(),
        })
    }

    fn charges(&self) -> usize {
        self.charged.lock().unwrap().len()
    }
}

/// What a client does: retry what may succeed later, 40 tries 25 ms apart.
fn with_retries(copies: usize) -> Duplicates<Result<Receipt, PayError>> {
    Duplicates::new(copies).retry_if(40, Duration::from_millis(25), |r| {
        matches!(r, Err(PayError::Retry(_)))
    })
}

#[tokio::test]
async fn duplicates_one_after_another_charge_once() {
    let payments = Payments::new(MemoryStore::new());
    let answers = Duplicates::new(5)
        .sequentially(|_| payments.charge("pay-1", 500))
        .await;
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(payments.charges(), 1);
}

#[tokio::test]
async fn concurrent_retries_charge_once() {
    let payments = Payments::new(MemoryStore::new());
    let answers = with_retries(8)
        .concurrently(|_| payments.charge("pay-1", 500))
        .await;
    assert!(
        answers.iter().all(|a| a.is_ok() && a == &answers[0]),
        "{answers:?}"
    );
    assert_eq!(payments.charges(), 1);
}

#[tokio::test]
async fn a_store_that_loses_replies_still_charges_once() {
    // A third of the claims and completes apply, then their reply is lost; seeded, so a
    // failure reproduces.
    let store = Arc::new(
        FaultyStore::new(MemoryStore::new(), 42)
            .inject(Fault::LoseReply, &[Op::Claim, Op::Complete], 0.33)
            .inject(Fault::Latency(Duration::from_millis(5)), &Op::ALL, 0.5),
    );
    let payments = Payments::new(store.clone());
    let answers = with_retries(8)
        .concurrently(|_| payments.charge("pay-1", 500))
        .await;
    assert!(
        answers.iter().all(|a| a.is_ok() && a == &answers[0]),
        "{answers:?}"
    );
    assert_eq!(payments.charges(), 1);
    assert!(store.injected().lost_replies > 0, "no reply was lost");
}

#[tokio::test]
async fn a_cancelled_first_attempt_is_retried_and_charges_once() {
    let payments = Payments::new(MemoryStore::new());
    // The client gives up before the card network answers: the call is dropped mid-body.
    let first = tokio::time::timeout(Duration::from_millis(10), payments.charge("pay-1", 500));
    assert!(
        first.await.is_err(),
        "the first attempt should have been cancelled"
    );
    // Its claim was released on drop: the retry runs now, not after the lease.
    let answers = with_retries(3)
        .sequentially(|_| payments.charge("pay-1", 500))
        .await;
    assert!(
        answers.iter().all(|a| a.is_ok() && a == &answers[0]),
        "{answers:?}"
    );
    assert_eq!(payments.charges(), 1);
}
