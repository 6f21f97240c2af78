//! Leases and TTLs as SQL arithmetic takes them.

use std::time::Duration;

/// The longest lease or TTL a store writes: about 100 years, in microseconds.
pub(crate) const CAP_US: i64 = 100 * 365 * 24 * 60 * 60 * 1_000_000;

/// A duration as whole microseconds for SQL arithmetic, capped at about 100 years.
pub(crate) fn micros(d: Duration) -> i64 {
    d.as_micros().min(CAP_US as u128) as i64
}
