//! The row a claim read and what it means, in the same shape for every database: whether
//! it is live (its `expires_at`, checked), and the claim outcome it stands for — or a
//! corrupt record, never a panic.

use bytes::Bytes;
use idem_core::store::{Busy, Claim, Outcome, Output, Record};
use idem_core::{Fingerprint, StoreError};
use std::time::Duration;

use crate::columns::{COMPLETED, IN_PROGRESS};
use crate::duration::CAP_US;
use crate::error::corrupt;

/// A row read for a key; each dialect decodes its own columns into it
/// ([`Dialect::found`](crate::dialect::Dialect::found)).
pub struct Found {
    pub(crate) state: i64,
    pub(crate) fingerprint: Vec<u8>,
    pub(crate) outcome: Option<i64>,
    pub(crate) output: Option<Vec<u8>>,
    /// Microseconds until it expires, by the database's clock (≤ 0: expired).
    pub(crate) remaining_us: i64,
}

impl Found {
    /// Whether it has not expired yet, by the database's clock.
    pub(crate) fn live(&self) -> bool {
        self.remaining_us > 0
    }

    /// The claim outcome for a live row. Malformed columns are a store error, never a panic.
    pub(crate) fn into_claim(self) -> Result<Claim, StoreError> {
        let corrupt = |what: &str| corrupt("claim", what);
        let len = self.fingerprint.len();
        let fingerprint = Fingerprint::from_bytes(
            self.fingerprint
                .try_into()
                .map_err(|_| corrupt(&format!("fingerprint is {len} bytes, not 32")))?,
        );
        match self.state {
            IN_PROGRESS => Ok(Claim::InProgress(Busy {
                fingerprint,
                lease_remaining: Some(Duration::from_micros(self.remaining_us.max(0) as u64)),
                waiter: None,
            })),
            COMPLETED => {
                let outcome = match self.outcome {
                    Some(0) => Outcome::Ok,
                    Some(1) => Outcome::Err,
                    _ => return Err(corrupt("outcome is not 0 or 1")),
                };
                let bytes = self
                    .output
                    .ok_or_else(|| corrupt("output is NULL on a completed record"))?;
                Ok(Claim::Completed(Record {
                    fingerprint,
                    output: Output {
                        outcome,
                        bytes: Bytes::from(bytes),
                    },
                }))
            }
            _ => Err(corrupt("state is not 0 or 1")),
        }
    }
}

/// The microseconds until a row's `expires_at`, checked: `None` (the database could not
/// compute it: `why_none` says why) and deadlines further ahead than any store writes are
/// corrupt records, so that such a row is an error naming the column rather than a key
/// that stays in progress or replays for centuries. Each dialect maps the values its
/// takeover and purge treat as past (PostgreSQL `-infinity`, a MySQL zero date, SQLite's
/// smallest integer) to a negative number before this, so they count as expired.
pub(crate) fn remaining_us(us: Option<i64>, why_none: &str) -> Result<i64, StoreError> {
    // A year of slack over the cap: a record written at the cap is never refused.
    const MAX_AHEAD_US: i64 = CAP_US + 365 * 24 * 60 * 60 * 1_000_000;
    match us {
        None => Err(corrupt("claim", format_args!("expires_at {why_none}"))),
        Some(us) if us > MAX_AHEAD_US => Err(corrupt(
            "claim",
            format_args!(
                "expires_at is {} years ahead; no lease or TTL is longer than 100 years",
                us / (365 * 24 * 60 * 60 * 1_000_000)
            ),
        )),
        Some(us) => Ok(us),
    }
}
