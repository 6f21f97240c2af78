//! The scripts' replies, read without trusting them: anything else is a `StoreError`.

use bytes::Bytes;
use idem_core::store::{Busy, Claim, Outcome, Output, Record, Token};
use idem_core::{Fingerprint, StoreError};
use redis::Value;
use std::time::Duration;

use crate::error::malformed;

/// The stored text of an outcome.
pub(crate) fn outcome_tag(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Err => "err",
    }
}

/// The reply of the claim script (see `scripts::CLAIM`) as a [`Claim`]; `token` is the
/// token the script was given, which a fresh claim now holds.
pub(crate) fn claim(reply: Value, token: Token) -> Result<Claim, StoreError> {
    const OP: &str = "claim";
    let Value::Array(items) = reply else {
        return Err(malformed(OP, format!("expected an array, got {reply:?}")));
    };
    let mut items = items.into_iter();
    match (items.next(), items.next(), items.next(), items.next()) {
        (Some(Value::Int(0)), None, None, None) => Ok(Claim::Claimed(token)),
        (Some(Value::Int(1)), Some(fp), Some(outcome), Some(bytes)) => {
            let fingerprint = fingerprint(fp)?;
            let outcome = match bulk(outcome, "outcome")?.as_slice() {
                b"ok" => Outcome::Ok,
                b"err" => Outcome::Err,
                other => {
                    let other = String::from_utf8_lossy(other);
                    return Err(malformed(OP, format!("unknown outcome {other:?}")));
                }
            };
            let bytes = Bytes::from(bulk(bytes, "output")?);
            Ok(Claim::Completed(Record {
                fingerprint,
                output: Output { outcome, bytes },
            }))
        }
        (Some(Value::Int(2)), Some(fp), Some(pttl), None) => {
            let fingerprint = fingerprint(fp)?;
            // PTTL is -1 without an expiry and -2 for a missing key; neither happens to a
            // record our scripts wrote, and neither is a lease to report.
            let lease_remaining = match pttl {
                Value::Int(ms) => u64::try_from(ms).ok().map(Duration::from_millis),
                other => return Err(malformed(OP, format!("PTTL was {other:?}"))),
            };
            Ok(Claim::InProgress(Busy {
                fingerprint,
                lease_remaining,
                waiter: None,
            }))
        }
        _ => Err(malformed(OP, "an array of unexpected shape")),
    }
}

/// The reply of a fenced script: `1` done, `0` the token does not own the record.
pub(crate) fn fenced(op: &'static str, reply: Value) -> Result<(), StoreError> {
    match reply {
        Value::Int(1) => Ok(()),
        Value::Int(0) => Err(StoreError::LeaseLost),
        other => Err(malformed(op, format!("expected 0 or 1, got {other:?}"))),
    }
}

/// A binary string field of the claim reply; a missing field (`nil`) is a record some other
/// writer left incomplete.
fn bulk(value: Value, field: &str) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::Nil => Err(malformed("claim", format!("the record has no {field}"))),
        other => Err(malformed("claim", format!("{field} was {other:?}"))),
    }
}

/// The stored fingerprint: exactly 32 bytes.
fn fingerprint(value: Value) -> Result<Fingerprint, StoreError> {
    let bytes = bulk(value, "fingerprint")?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        malformed(
            "claim",
            format!("a fingerprint of {} bytes, not 32", b.len()),
        )
    })?;
    Ok(Fingerprint::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::new(7)
    }

    #[test]
    fn reads_each_outcome() {
        assert!(matches!(
            claim(Value::Array(vec![Value::Int(0)]), token()),
            Ok(Claim::Claimed(t)) if t == token()
        ));
        let done = Value::Array(vec![
            Value::Int(1),
            Value::BulkString(vec![3; 32]),
            Value::BulkString(b"err".to_vec()),
            Value::BulkString(Vec::new()),
        ]);
        let Ok(Claim::Completed(record)) = claim(done, token()) else {
            panic!("not completed");
        };
        assert_eq!(record.output.outcome, Outcome::Err);
        assert!(record.output.bytes.is_empty());
        let busy = Value::Array(vec![
            Value::Int(2),
            Value::BulkString(vec![3; 32]),
            Value::Int(1500),
        ]);
        let Ok(Claim::InProgress(busy)) = claim(busy, token()) else {
            panic!("not in progress");
        };
        assert_eq!(busy.lease_remaining, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let bad = [
            Value::Nil,
            Value::Int(0),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(9)]),
            Value::Array(vec![Value::Int(1), Value::BulkString(vec![3; 31])]),
            Value::Array(vec![
                Value::Int(1),
                Value::BulkString(vec![3; 32]),
                Value::BulkString(b"maybe".to_vec()),
                Value::BulkString(Vec::new()),
            ]),
            Value::Array(vec![
                Value::Int(1),
                Value::BulkString(vec![3; 32]),
                Value::Nil,
                Value::Nil,
            ]),
            Value::Array(vec![
                Value::Int(2),
                Value::BulkString(vec![3; 32]),
                Value::Nil,
            ]),
        ];
        for reply in bad {
            assert!(
                matches!(
                    claim(reply.clone(), token()),
                    Err(StoreError::Backend { .. })
                ),
                "{reply:?}"
            );
        }
        assert!(matches!(
            fenced("renew", Value::Int(0)),
            Err(StoreError::LeaseLost)
        ));
        assert!(fenced("renew", Value::Int(1)).is_ok());
        assert!(matches!(
            fenced("renew", Value::Nil),
            Err(StoreError::Backend { .. })
        ));
    }
}
