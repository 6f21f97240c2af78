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
    /// The HTTP status the IETF Idempotency-Key draft gives this error:
    /// 400 missing or invalid key, 409 in progress, 422 payload mismatch, else 500 (a codec
    /// or store failure, or idem configured wrongly).
    pub fn http_status(&self) -> u16 {
        match self {
            Error::MissingKey | Error::InvalidKey => 400,
            Error::InProgress | Error::WaitTimeout => 409,
            Error::PayloadMismatch => 422,
            Error::Codec(_) | Error::Store(_) | Error::Config(_) => 500,
        }
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
