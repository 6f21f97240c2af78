//! What a claim's read found, in the same shape for every database.

use bytes::Bytes;
use idem_core::{Busy, Claim, Fingerprint, Outcome, Output, Record, StoreError};
use std::fmt::Display;
use std::time::Duration;

/// `state` column values.
pub(crate) const IN_PROGRESS: i64 = 0;
pub(crate) const COMPLETED: i64 = 1;

/// `outcome` column values.
pub(crate) fn outcome_code(outcome: Outcome) -> i16 {
    match outcome {
        Outcome::Ok => 0,
        Outcome::Err => 1,
    }
}

/// A row read for a key.
pub(crate) struct Found {
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

/// The longest lease or TTL a store writes: about 100 years, in microseconds.
const CAP_US: i64 = 100 * 365 * 24 * 60 * 60 * 1_000_000;

/// A duration as whole microseconds for SQL arithmetic, capped at about 100 years.
pub(crate) fn micros(d: Duration) -> i64 {
    d.as_micros().min(CAP_US as u128) as i64
}

/// A record no store wrote (a manual edit, a foreign schema): a clean error naming what is
/// wrong with it, e.g. `corrupt("claim", "expires_at is +infinity")`.
pub(crate) fn corrupt(op: &'static str, what: impl Display) -> StoreError {
    StoreError::backend(op, format!("corrupt record: {what}"))
}

/// The microseconds until a row's `expires_at`, checked: `None` (the database could not
/// compute it: `why_none` says why) and deadlines further ahead than any store writes are
/// corrupt records, so that such a row is an error naming the column rather than a key
/// that stays in progress or replays for centuries. Each store maps the values its
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

/// How many times a claim retries when the row changed between its statements.
pub(crate) const CLAIM_ATTEMPTS: usize = 8;

/// Maps a sqlx error to a store error naming the operation.
pub(crate) fn backend(op: &'static str) -> impl Fn(sqlx::Error) -> StoreError + Copy {
    move |e| StoreError::backend(op, e)
}

/// A fenced statement touched the owner's row (1) or found it gone or taken over (0).
pub(crate) fn fenced(rows: u64) -> Result<(), StoreError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost)
    }
}
