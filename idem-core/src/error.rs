//! The errors a caller can match on.

use std::time::Duration;

/// What an idempotent call can fail with besides the body's own error.
///
/// A function annotated with `#[idempotent]` returns `Result<T, E>` with
/// `E: From<idem::Error>`, so these arrive as the function's own error type.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key was used before with a different request payload.
    #[error("idempotency key reused with a different request payload")]
    PayloadMismatch,
    /// Another call with the same key is running (`on_conflict = reject`).
    #[error("a call with this idempotency key is already in progress")]
    InProgress,
    /// The key expression evaluated to `None`.
    #[error("no idempotency key was given")]
    MissingKey,
    /// The key is not usable (for example an empty string).
    #[error("invalid idempotency key: it must not be empty")]
    InvalidKey,
    /// `on_conflict = wait` waited `wait_timeout` without the other call finishing.
    #[error("gave up waiting for the call in progress with this idempotency key")]
    WaitTimeout,
    /// A value could not be fingerprinted, encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// The HTTP status the IETF Idempotency-Key draft gives this error:
    /// 400 missing or invalid key, 409 in progress, 422 payload mismatch, else 500.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::MissingKey | Error::InvalidKey => 400,
            Error::InProgress | Error::WaitTimeout => 409,
            Error::PayloadMismatch => 422,
            Error::Codec(_) | Error::Store(_) => 500,
        }
    }
}

/// A value could not be fingerprinted, encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{codec} could not {action}: {detail}")]
pub struct CodecError {
    codec: &'static str,
    action: &'static str,
    detail: String,
}

impl CodecError {
    /// An error of `codec` (its name) while doing `action` ("encode", "decode", ...).
    pub fn new(codec: &'static str, action: &'static str, detail: impl Into<String>) -> Self {
        CodecError {
            codec,
            action,
            detail: detail.into(),
        }
    }

    /// The name of the codec that failed.
    pub fn codec(&self) -> &'static str {
        self.codec
    }
}

/// A store operation failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The call's claim is gone: its lease expired and another call took the record over,
    /// so this call may no longer complete or release it (the fence refused it).
    #[error("the claim was lost: its lease expired and another call took the record over")]
    LeaseLost,
    /// The function has no `store =` and no default store was set.
    #[error(
        "no store: pass `store = ...` to #[idempotent] or call idem::set_default_store at startup"
    )]
    NoDefaultStore,
    /// The backend failed while doing `op`.
    #[error("store operation `{op}` failed: {source}")]
    Backend {
        /// The operation: "claim", "complete", "release", "renew", "purge", ...
        op: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store was configured wrongly (an invalid table name, ...).
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The backend did not answer within `after`.
    #[error("store operation `{op}` timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// How long it was given.
        after: Duration,
    },
}

impl StoreError {
    /// Wraps a backend error for operation `op`.
    pub fn backend(
        op: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            op,
            source: source.into(),
        }
    }
}
