//! The errors a caller can match on.

use std::fmt;
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
    /// The program configured idem wrongly: an invalid table name, an invalid key prefix,
    /// ... A mistake to fix in the code or its settings, not a failure to retry.
    #[error("idem is configured wrongly: {0}")]
    Config(String),
}

impl Error {
    /// The HTTP status the IETF Idempotency-Key draft gives this error: 400 missing or
    /// invalid key, 409 in progress, 422 payload mismatch, 503 the store failed (try again
    /// later), else 500 (a codec failure, or idem configured wrongly).
    pub fn http_status(&self) -> u16 {
        match self {
            Error::MissingKey | Error::InvalidKey => 400,
            Error::InProgress | Error::WaitTimeout => 409,
            Error::PayloadMismatch => 422,
            Error::Store(StoreError::NoDefaultStore) => 500,
            Error::Store(_) => 503,
            Error::Codec(_) | Error::Config(_) => 500,
        }
    }

    /// Another call with this key was in progress (`InProgress`, or `WaitTimeout` after
    /// waiting for it): the same call later replays its result or runs. HTTP 409.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::InProgress | Error::WaitTimeout)
    }

    /// The same call may succeed later: a conflict, or a store that failed (down, timed
    /// out, the claim lost to a takeover). A consumer redelivers these (nack, requeue);
    /// a client retries them with the same key.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InProgress | Error::WaitTimeout => true,
            Error::Store(StoreError::NoDefaultStore) => false,
            Error::Store(_) => true,
            Error::PayloadMismatch
            | Error::MissingKey
            | Error::InvalidKey
            | Error::Codec(_)
            | Error::Config(_) => false,
        }
    }

    /// Retrying the same request can only fail the same way: a payload mismatch, a missing
    /// or invalid key, a value that cannot be encoded or decoded, idem configured wrongly.
    /// A consumer dead-letters these rather than redeliver them.
    pub fn is_permanent(&self) -> bool {
        !self.is_retryable()
    }
}

/// A value could not be fingerprinted, encoded or decoded.
///
/// Its message names the codec, what it was doing and why; the underlying error (the
/// codec's own, or a `Serialize` impl's) is also its [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct CodecError {
    codec: &'static str,
    action: &'static str,
    /// What the source does not say (or all of it, without a source); may be empty.
    detail: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CodecError {
    /// An error of `codec` (its name) while doing `action` ("encode", "decode", ...), for
    /// the reason `detail`.
    pub fn new(codec: &'static str, action: &'static str, detail: impl Into<String>) -> Self {
        CodecError {
            codec,
            action,
            detail: detail.into(),
            source: None,
        }
    }

    /// An error of `codec` while doing `action`, caused by `source` (a codec's error, or
    /// the message of a `Serialize` impl): its message follows the action's, and it is the
    /// error's [`source`](std::error::Error::source).
    pub fn with_source(
        codec: &'static str,
        action: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        CodecError {
            codec,
            action,
            detail: String::new(),
            source: Some(source.into()),
        }
    }

    /// The same error with `note` after the source's message: advice the source cannot
    /// give (which codec would decode the value, say).
    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        let note = note.into();
        if self.detail.is_empty() {
            self.detail = note;
        } else {
            self.detail.push(' ');
            self.detail.push_str(&note);
        }
        self
    }

    /// The name of the codec that failed.
    pub fn codec(&self) -> &'static str {
        self.codec
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} could not {}", self.codec, self.action)?;
        let mut sep = ": ";
        if let Some(source) = &self.source {
            write!(f, "{sep}{source}")?;
            sep = " ";
        }
        if !self.detail.is_empty() {
            write!(f, "{sep}{}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant is exactly one of retryable and permanent, and conflicts are retryable.
    #[test]
    fn every_error_is_classified() {
        let backend = || StoreError::backend("claim", "connection refused");
        let cases = [
            (Error::PayloadMismatch, false, false, 422),
            (Error::InProgress, true, true, 409),
            (Error::MissingKey, false, false, 400),
            (Error::InvalidKey, false, false, 400),
            (Error::WaitTimeout, true, true, 409),
            (
                Error::Codec(CodecError::new("bincode", "decode", "x")),
                false,
                false,
                500,
            ),
            (Error::Store(backend()), true, false, 503),
            (Error::Store(StoreError::LeaseLost), true, false, 503),
            (Error::Store(StoreError::NoDefaultStore), false, false, 500),
            (Error::Config("table".into()), false, false, 500),
        ];
        for (error, retryable, conflict, status) in cases {
            assert_eq!(error.is_retryable(), retryable, "{error:?}");
            assert_eq!(error.is_permanent(), !retryable, "{error:?}");
            assert_eq!(error.is_conflict(), conflict, "{error:?}");
            assert_eq!(error.http_status(), status, "{error:?}");
        }
    }
}
