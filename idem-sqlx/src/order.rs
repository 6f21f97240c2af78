//! Which statement a claim sends first: the read or the insert.

use idem_core::StoreError;
use idem_core::store::Claim;
use std::sync::atomic::{AtomicU8, Ordering};

/// Which statement a SQL store's claim sends first.
///
/// A claim is a `SELECT` of the key and an insert of the claim, and no statement does the
/// work of both at the cost of either. Reading first makes a replay one `SELECT` (what a
/// replay should cost) and a first call one statement more; inserting first is the
/// reverse: a first call is one insert, and a replay the insert (which finds the key and
/// changes nothing) and then the read. Both orders are equally correct.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOrder {
    /// Follow the store's recent claims (the default): the read while most of them found
    /// records (retries, redeliveries — and while the store is new), the insert while most
    /// were first calls. Changes after about eight claims in a row of the other kind.
    #[default]
    Learned,
    /// Always the read first: replays never send an insert (on SQLite, never wait for the
    /// write lock), every first call costs one statement more.
    ReadFirst,
    /// Always the insert first: first calls cost one statement, every replay two.
    InsertFirst,
}

/// A store's claim order, with what it learned.
pub(crate) struct Order {
    order: ClaimOrder,
    /// 0–`MEMORY`: up one for a claim that found a live record, down one for a claim
    /// that took the key.
    recent: AtomicU8,
}

/// How many claims the learned order remembers.
const MEMORY: u8 = 16;

impl Order {
    /// A new store's order; a learned one starts reading first, so a new store writes
    /// nothing until first calls are what it sees.
    pub(crate) fn new(order: ClaimOrder) -> Self {
        Order {
            order,
            recent: AtomicU8::new(MEMORY),
        }
    }

    /// The order it was made with.
    pub(crate) fn order(&self) -> ClaimOrder {
        self.order
    }

    /// Whether the next claim should read first.
    pub(crate) fn read_first(&self) -> bool {
        match self.order {
            ClaimOrder::Learned => self.recent.load(Ordering::Relaxed) > MEMORY / 2,
            ClaimOrder::ReadFirst => true,
            ClaimOrder::InsertFirst => false,
        }
    }

    /// Counts a claim's outcome (found a live record, or took the key) and passes it on.
    pub(crate) fn learn(&self, claim: Result<Claim, StoreError>) -> Result<Claim, StoreError> {
        if let Ok(claim) = &claim {
            let found = !matches!(claim, Claim::Claimed(_));
            // No write once it is settled at either end.
            let _ =
                self.recent
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| match found {
                        true if n < MEMORY => Some(n + 1),
                        false if n > 0 => Some(n - 1),
                        _ => None,
                    });
        }
        claim
    }
}

impl Default for Order {
    fn default() -> Self {
        Order::new(ClaimOrder::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idem_core::Fingerprint;
    use idem_core::store::{Busy, Token};

    fn claimed() -> Result<Claim, StoreError> {
        Ok(Claim::Claimed(Token::new(1)))
    }

    fn found() -> Result<Claim, StoreError> {
        Ok(Claim::InProgress(Busy {
            fingerprint: Fingerprint::from_bytes([0; 32]),
            lease_remaining: None,
            waiter: None,
        }))
    }

    #[test]
    fn learned_order_follows_what_claims_found() {
        let order = Order::default();
        assert!(order.read_first(), "a new store reads first");
        for _ in 0..MEMORY / 2 - 1 {
            let _ = order.learn(claimed());
        }
        assert!(order.read_first(), "one short of half its memory");
        let _ = order.learn(claimed());
        assert!(!order.read_first());
        for _ in 0..100 {
            let _ = order.learn(claimed());
        }
        // Saturated: one more than half its memory of replays in a row turn it back.
        for _ in 0..MEMORY / 2 {
            let _ = order.learn(found());
        }
        assert!(!order.read_first(), "one short");
        let _ = order.learn(found());
        assert!(order.read_first());
        for _ in 0..MEMORY / 2 {
            let _ = order.learn(claimed());
        }
        // Errors teach nothing.
        for _ in 0..100 {
            let _ = order.learn(Err(StoreError::LeaseLost));
        }
        assert!(!order.read_first());
    }

    #[test]
    fn fixed_orders_do_not_learn() {
        let read = Order::new(ClaimOrder::ReadFirst);
        let insert = Order::new(ClaimOrder::InsertFirst);
        for _ in 0..100 {
            let _ = read.learn(claimed());
            let _ = insert.learn(found());
        }
        assert!(read.read_first());
        assert!(!insert.read_first());
    }
}
