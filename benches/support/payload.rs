//! The request and output the memory and SQL benches share, the body every side runs, and
//! the keys they call with.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// A realistic small request: ~100 bytes in bincode.
#[derive(Clone, Serialize)]
pub(crate) struct Transfer {
    pub(crate) request_id: String,
    pub(crate) user_id: u64,
    pub(crate) account: String,
    pub(crate) amount_cents: u64,
    pub(crate) memo: String,
}

/// A realistic small output: ~50 bytes in bincode.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Receipt {
    pub(crate) transfer_id: String,
    pub(crate) amount_cents: u64,
    pub(crate) status: String,
    pub(crate) settled_at: u64,
}

pub(crate) fn request(id: u64) -> Transfer {
    Transfer {
        request_id: format!("req-{id:016x}"),
        user_id: 42_424,
        account: "acct_1N4xY7LkQz9w2B".to_owned(),
        amount_cents: 125_000,
        memo: "invoice 2024-11, consulting services".to_owned(),
    }
}

/// The body, identical on both sides.
pub(crate) fn settle(req: &Transfer) -> Receipt {
    Receipt {
        transfer_id: format!("tr_{}", req.request_id),
        amount_cents: req.amount_cents,
        status: "settled".to_owned(),
        settled_at: 1_733_000_000,
    }
}

/// The request every replay bench sends (its key recorded first).
pub(crate) const REPLAYED: u64 = u64::MAX;

/// Distinct keys across every sample, side and case of the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// `n` requests whose keys no other call of the process used.
pub(crate) fn fresh_requests(n: u64) -> Vec<Transfer> {
    let start = NEXT_ID.fetch_add(n, Ordering::Relaxed);
    (start..start + n).map(request).collect()
}

/// Prints the sizes of the request and the output in bincode.
pub(crate) fn sizes(bench: &str) {
    fn len(value: &impl Serialize) -> usize {
        bincode::serde::encode_to_vec(value, bincode::config::standard())
            .unwrap()
            .len()
    }
    let req = request(0);
    eprintln!(
        "{bench} bench: request {} B, output {} B (bincode)",
        len(&req),
        len(&settle(&req))
    );
}
