//! Tracing and metrics for each call: one span, one outcome.

use std::fmt;

use crate::KeyDigest;

/// How a call ended, as recorded on its span and in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Executed,
    Replayed,
    InProgress,
    Mismatch,
    Released,
    LeaseLost,
    WaitTimeout,
    StoreError,
    CodecError,
    Panicked,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::InProgress => "in_progress",
            Outcome::Mismatch => "mismatch",
            Outcome::Released => "released",
            Outcome::LeaseLost => "lease_lost",
            Outcome::WaitTimeout => "wait_timeout",
            Outcome::StoreError => "store_error",
            Outcome::CodecError => "codec_error",
            Outcome::Panicked => "panicked",
        }
    }
}

/// Formats the digest prefix only if a subscriber records the field.
pub(crate) struct ShortDigest<'a>(pub(crate) &'a KeyDigest);

impl fmt::Display for ShortDigest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0.as_bytes()[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The span of one call: function and short key digest, never the payload.
pub(crate) fn span(function: &'static str, key: &KeyDigest) -> tracing::Span {
    tracing::info_span!(
        "idempotent",
        function,
        key = %ShortDigest(key),
        outcome = tracing::field::Empty
    )
}

/// Records `outcome` on the current span and in the counters.
pub(crate) fn record(function: &'static str, outcome: Outcome) {
    tracing::Span::current().record("outcome", outcome.as_str());
    #[cfg(feature = "metrics")]
    {
        let name = match outcome {
            Outcome::Executed | Outcome::Released | Outcome::LeaseLost | Outcome::Panicked => {
                Some("idem_executions_total")
            }
            Outcome::Replayed => Some("idem_replays_total"),
            Outcome::InProgress | Outcome::WaitTimeout => Some("idem_conflicts_total"),
            Outcome::Mismatch => Some("idem_mismatches_total"),
            Outcome::StoreError => Some("idem_store_errors_total"),
            Outcome::CodecError => None,
        };
        if let Some(name) = name {
            metrics::counter!(name, "function" => function, "outcome" => outcome.as_str())
                .increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = function;
}

/// Counts a store error that did not end the call (a failed renew, release or record).
pub(crate) fn store_error(function: &'static str, op: &'static str, error: &crate::StoreError) {
    tracing::warn!(op, %error, "idempotency store error");
    #[cfg(feature = "metrics")]
    metrics::counter!("idem_store_errors_total", "function" => function, "op" => op).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = function;
}
