//! What the store's answers mean, the same in both modes: settle a claim's answer (own,
//! replay, reject or wait), decode a replay, and say what a body's result leaves behind.

use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

use super::Idempotent;
use crate::error::CodecError;
use crate::error_policy::ErrorPolicy;
use crate::observe::CallOutcome;
use crate::options::{OnConflict, Options};
use crate::store::{Claim, Outcome, Output, Record, Token};
use crate::{Error, Fingerprint, StoreError};

/// Longest pause between polls of a store that cannot notify waiters.
const MAX_POLL: Duration = Duration::from_millis(250);

/// A claim's answer, once settled.
pub(crate) enum Acquired {
    /// This call owns the key: run the body.
    Owner(Token),
    /// A completed record with this call's fingerprint: replay it.
    Replay(Record),
}

/// What a body's result leaves behind.
pub(crate) enum Leave {
    /// Record this output (the `Ok` value, or an error the policy caches).
    Record(Output),
    /// Remove the claim, so a retry runs again: an error that is not cached.
    Release,
    /// Remove the claim and fail with this: an `Ok` value that cannot be recorded.
    Refuse(CodecError),
}

/// What a call did, for adapters that tell their own callers: HTTP's
/// `Idempotent-Replayed` and `Retry-After` ([`Idempotent::run_reported`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// This call owned the key and ran the body.
    Executed,
    /// A completed record was found: its result was returned (or failed to decode) and
    /// the body did not run.
    Replayed,
    /// Another call owns the key (`Error::InProgress`); its lease runs out in about
    /// `retry_after`, if the store said. The body did not run.
    InProgress {
        /// Roughly how long until the owner's lease expires.
        retry_after: Option<Duration>,
    },
    /// The body did not run for another reason: a payload mismatch, a wait timeout, a
    /// missing key, a store that failed.
    Refused,
}

/// How long a call may still wait for a concurrent owner, and how often it polls.
pub(crate) struct Patience {
    wait_timeout: Duration,
    /// Set when the call first has to wait (most calls never do).
    deadline: Option<Instant>,
    poll: Duration,
    /// The owner's remaining lease when the call gave up on it.
    retry_after: Option<Duration>,
}

impl Patience {
    pub(crate) fn new(options: &Options) -> Self {
        Patience {
            wait_timeout: options.wait_timeout,
            deadline: None,
            poll: Duration::from_millis(2),
            retry_after: None,
        }
    }

    /// What a call that ended with `error` before its body ran did.
    pub(crate) fn disposition(&self, error: &Error) -> Disposition {
        match error {
            Error::InProgress => Disposition::InProgress {
                retry_after: self.retry_after,
            },
            _ => Disposition::Refused,
        }
    }
}

impl<T, E, P: ErrorPolicy<E>> Idempotent<T, E, P> {
    /// What a claim's answer means for this call: `Some` when it owns the key or has a
    /// record to replay, `None` after waiting for a concurrent owner (claim again).
    /// The fingerprint is checked on every path that finds a record.
    pub(crate) async fn settle(
        &self,
        fingerprint: &Fingerprint,
        claim: Result<Claim, StoreError>,
        patience: &mut Patience,
    ) -> Result<Option<Acquired>, Error> {
        let busy = match claim {
            Ok(Claim::Claimed(token)) => return Ok(Some(Acquired::Owner(token))),
            Ok(Claim::Completed(record)) => {
                self.check_fingerprint(fingerprint, &record.fingerprint)?;
                return Ok(Some(Acquired::Replay(record)));
            }
            Ok(Claim::InProgress(busy)) => busy,
            Err(e) => {
                self.outcome(CallOutcome::StoreError);
                return Err(e.into());
            }
        };
        self.check_fingerprint(fingerprint, &busy.fingerprint)?;
        if self.options.on_conflict == OnConflict::Reject {
            patience.retry_after = busy.lease_remaining;
            self.outcome(CallOutcome::InProgress);
            return Err(Error::InProgress);
        }
        let now = Instant::now();
        let deadline = *patience.deadline.get_or_insert(now + patience.wait_timeout);
        if now >= deadline {
            self.outcome(CallOutcome::WaitTimeout);
            return Err(Error::WaitTimeout);
        }
        // Wake when the owner finishes, its lease runs out, or our patience does.
        let mut pause = deadline - now;
        if let Some(lease) = busy.lease_remaining {
            pause = pause.min(lease + Duration::from_millis(1));
        }
        match busy.waiter {
            Some(waiter) => {
                let _ = tokio::time::timeout(pause, waiter).await;
            }
            None => {
                tokio::time::sleep(pause.min(patience.poll)).await;
                patience.poll = (patience.poll * 2).min(MAX_POLL);
            }
        }
        Ok(None)
    }

    pub(super) fn check_fingerprint(
        &self,
        ours: &Fingerprint,
        recorded: &Fingerprint,
    ) -> Result<(), Error> {
        if recorded == ours {
            Ok(())
        } else {
            self.outcome(CallOutcome::Mismatch);
            Err(Error::PayloadMismatch)
        }
    }

    /// The recorded result; a record that does not decode is an `Error::Codec`.
    pub(crate) fn replay(&self, record: Record) -> Result<T, E> {
        let replayed = match record.output.outcome {
            Outcome::Ok => self.output.decode(&record.output.bytes).map(Ok),
            Outcome::Err => self.policy.replay(&record.output.bytes).map(Err),
        };
        match replayed {
            Ok(result) => {
                self.outcome(CallOutcome::Replayed);
                result
            }
            Err(e) => {
                self.outcome(CallOutcome::CodecError);
                Err((self.into_error)(Error::Codec(e)))
            }
        }
    }

    /// What `result` leaves behind in a store that records at most `max` bytes.
    pub(crate) fn leave(&self, result: &Result<T, E>, max: usize) -> Leave {
        match result {
            Ok(value) => match self.output.encode(value).and_then(|b| fits(b, max)) {
                Ok(bytes) => Leave::Record(Output {
                    outcome: Outcome::Ok,
                    bytes,
                }),
                // Unrecordable output: free the key and say so loudly.
                Err(e) => Leave::Refuse(e),
            },
            Err(error) => match self
                .policy
                .record(error)
                .map(|b| b.and_then(|b| fits(b, max)))
            {
                Some(Ok(bytes)) => Leave::Record(Output {
                    outcome: Outcome::Err,
                    bytes,
                }),
                Some(Err(e)) => {
                    // The body's own error still reaches the caller; only its caching failed.
                    tracing::warn!(%e, "could not encode the error to cache it; released");
                    Leave::Release
                }
                None => Leave::Release,
            },
        }
    }

    /// The call's result after `leave` said [`Leave::Refuse`].
    pub(crate) fn refused(&self, error: CodecError) -> Result<T, E> {
        self.outcome(CallOutcome::CodecError);
        Err((self.into_error)(Error::Codec(error)))
    }

    /// The call's result when its record could not be written inside the transaction.
    pub(crate) fn store_failed(&self, error: StoreError) -> Result<T, E> {
        self.outcome(CallOutcome::StoreError);
        Err((self.into_error)(Error::Store(error)))
    }

    /// The call's result when it did not get to run its body.
    pub(crate) fn failed(&self, error: Error) -> Result<T, E> {
        Err((self.into_error)(error))
    }
}

/// The encoded output, if a store that holds at most `max` bytes can record it. One it
/// cannot would hold the claim until its lease ran out, and then run again: it is refused
/// like an unencodable one.
fn fits(bytes: Bytes, max: usize) -> Result<Bytes, CodecError> {
    if bytes.len() <= max {
        return Ok(bytes);
    }
    Err(CodecError::new(
        "idem",
        "record the output",
        format!(
            "it is {} bytes encoded, more than the {max} this store can record",
            bytes.len()
        ),
    ))
}
