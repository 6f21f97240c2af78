//! What the `state` and `outcome` columns hold.

use idem_core::store::Outcome;

/// `state`: a claim in progress.
pub(crate) const IN_PROGRESS: i64 = 0;
/// `state`: a completed record.
pub(crate) const COMPLETED: i64 = 1;

/// The `outcome` column's value for `outcome`.
pub(crate) fn outcome_code(outcome: Outcome) -> i16 {
    match outcome {
        Outcome::Ok => 0,
        Outcome::Err => 1,
    }
}
