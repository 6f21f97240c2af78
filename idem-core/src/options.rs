//! The settings of one idempotent function: namespace, TTL, lease, conflict policy.

use std::time::Duration;

/// The settings of one idempotent function.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The namespace of its records: `module_path!()::fn_name`, or `name = "…"`.
    pub namespace: &'static str,
    /// How long a completed record is kept.
    pub ttl: Duration,
    /// How long an in-progress claim lives without a heartbeat.
    pub lease: Duration,
    /// What a concurrent duplicate gets.
    pub on_conflict: OnConflict,
    /// With [`OnConflict::Wait`], how long to wait before [`Error::WaitTimeout`](crate::Error::WaitTimeout).
    pub wait_timeout: Duration,
}

impl Options {
    /// The defaults: TTL 24h, lease 30s, reject concurrent duplicates, wait at most 10s.
    pub const fn new(namespace: &'static str) -> Self {
        Options {
            namespace,
            ttl: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(30),
            on_conflict: OnConflict::Reject,
            wait_timeout: Duration::from_secs(10),
        }
    }
}

/// What a call gets when another call with the same key is in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// [`Error::InProgress`](crate::Error::InProgress) at once (the default; HTTP 409).
    Reject,
    /// Wait for the other call: replay its result, or run if it released or crashed.
    Wait,
}
