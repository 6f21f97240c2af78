//! Tracing and metrics for each call: one span, one outcome.

use crate::store::KeyDigest;

/// How a call ended, as recorded on its span and in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallOutcome {
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

impl CallOutcome {
    fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Executed => "executed",
            CallOutcome::Replayed => "replayed",
            CallOutcome::InProgress => "in_progress",
            CallOutcome::Mismatch => "mismatch",
            CallOutcome::Released => "released",
            CallOutcome::LeaseLost => "lease_lost",
            CallOutcome::WaitTimeout => "wait_timeout",
            CallOutcome::StoreError => "store_error",
            CallOutcome::CodecError => "codec_error",
            CallOutcome::Panicked => "panicked",
        }
    }
}

/// The span of one call: function and short key digest, never the payload.
pub(crate) fn span(function: &'static str, key: &KeyDigest) -> tracing::Span {
    tracing::info_span!(
        "idempotent",
        function,
        // Formatted only if a subscriber records the field.
        key = %key.short(),
        outcome = tracing::field::Empty
    )
}

/// Records `outcome` on the current span and in the counters.
pub(crate) fn record(function: &'static str, outcome: CallOutcome) {
    tracing::Span::current().record("outcome", outcome.as_str());
    #[cfg(feature = "metrics")]
    {
        let name = match outcome {
            CallOutcome::Executed
            | CallOutcome::Released
            | CallOutcome::LeaseLost
            | CallOutcome::Panicked => Some("idem_executions_total"),
            CallOutcome::Replayed => Some("idem_replays_total"),
            CallOutcome::InProgress | CallOutcome::WaitTimeout => Some("idem_conflicts_total"),
            CallOutcome::Mismatch => Some("idem_mismatches_total"),
            CallOutcome::StoreError => Some("idem_store_errors_total"),
            CallOutcome::CodecError => None,
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
