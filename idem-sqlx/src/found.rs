//! What a claim's read found, in the same shape for every database.

use bytes::Bytes;
use idem_core::{Busy, Claim, Fingerprint, Outcome, Output, Record, StoreError};
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
        let corrupt = |what: &str| StoreError::backend("claim", format!("corrupt record: {what}"));
        let fingerprint = Fingerprint::from_bytes(
            self.fingerprint
                .try_into()
                .map_err(|_| corrupt("the fingerprint is not 32 bytes"))?,
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
                    _ => return Err(corrupt("unknown outcome")),
                };
                let bytes = self.output.ok_or_else(|| corrupt("no output"))?;
                Ok(Claim::Completed(Record {
                    fingerprint,
                    output: Output {
                        outcome,
                        bytes: Bytes::from(bytes),
                    },
                }))
            }
            _ => Err(corrupt("unknown state")),
        }
    }
}

/// A duration as whole microseconds for SQL arithmetic, capped at about 100 years.
pub(crate) fn micros(d: Duration) -> i64 {
    const CAP: u128 = 100 * 365 * 24 * 60 * 60 * 1_000_000;
    d.as_micros().min(CAP) as i64
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
