//! The record: one packed binary string per key, and reading it back without trusting it.
//!
//! Layout (`[kind][token][fingerprint][rest]`):
//!
//! | bytes | in progress | completed |
//! |---|---|---|
//! | 0 | [`IN_PROGRESS`] | [`DONE_OK`] or [`DONE_ERR`] |
//! | 1..9 | the claim's token, little-endian | the token that completed it |
//! | 9..41 | the request's fingerprint | the request's fingerprint |
//! | 41.. | the owner's lease in ms, 8 bytes little-endian | the output |
//!
//! The kind bytes are 0xC1–0xC3, which never start (or appear in) UTF-8 text, so a text
//! value someone else left under the prefix is refused rather than misread. The key's
//! expiry is the lease while in progress and the TTL once completed; the scripts in
//! `scripts.rs` compare the token at bytes 1..9 and the kind at byte 0.
//!
//! A record written by an earlier idem-redis (a Redis hash) makes the claim fail with
//! `WRONGTYPE`, which [`claim_error`] turns into a `StoreError` that says so: never read as
//! another record, never overwritten (its owner may still be running). It disappears at its
//! own TTL.

use bytes::Bytes;
use idem_core::store::{Busy, Claim, Outcome, Output, Record, Token};
use idem_core::{Fingerprint, StoreError};
use std::time::Duration;

use crate::error::{backend, malformed};

/// The kind byte of an in-progress record.
pub(crate) const IN_PROGRESS: u8 = 0xC1;
/// The kind byte of a record completed with `Ok`.
pub(crate) const DONE_OK: u8 = 0xC2;
/// The kind byte of a record completed with a cached `Err`.
pub(crate) const DONE_ERR: u8 = 0xC3;

/// Where the fingerprint ends and the lease (in progress) or the output (completed) begins.
const HEADER: usize = 1 + 8 + 32;

/// The length of an in-progress record: the header and the lease.
const IN_PROGRESS_LEN: usize = HEADER + 8;

/// The kind byte of a completed record with `outcome`.
pub(crate) fn done_kind(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Ok => DONE_OK,
        Outcome::Err => DONE_ERR,
    }
}

/// The token as the scripts compare it: its 8 bytes, little-endian.
pub(crate) fn token_bytes(token: Token) -> [u8; 8] {
    token.get().to_le_bytes()
}

/// The in-progress record a claim writes: `token` owns it, for a lease of `lease_ms`.
pub(crate) fn in_progress(token: Token, fingerprint: &Fingerprint, lease_ms: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(IN_PROGRESS_LEN);
    value.push(IN_PROGRESS);
    value.extend_from_slice(&token_bytes(token));
    value.extend_from_slice(fingerprint.as_bytes());
    value.extend_from_slice(&lease_ms.to_le_bytes());
    value
}

/// What the claim's `SET … NX GET` returned, as a [`Claim`]: nothing (`None`) means the key
/// was absent and `token` now owns it, and so does an in-progress record of `token` (the
/// claim was sent twice and its first send wrote it); otherwise the live record it found
/// (and left alone).
///
/// An in-progress record reports the owner's whole lease as `lease_remaining`: an upper
/// bound of what remains, read without a second command (BENCHMARKS.md: a `PTTL` in the same
/// round trip cost every replay ~2.4 µs, 11%).
pub(crate) fn claim(previous: Option<Vec<u8>>, token: Token) -> Result<Claim, StoreError> {
    let Some(value) = previous else {
        return Ok(Claim::Claimed(token));
    };
    if value.len() < HEADER {
        return Err(foreign(format!("{} bytes", value.len())));
    }
    let too_short = |_| foreign(format!("{} bytes", value.len()));
    let fingerprint = Fingerprint::from_bytes(value[9..HEADER].try_into().map_err(too_short)?);
    let outcome = match value[0] {
        // Our own claim: this request was sent twice (the cluster client resends a request
        // whose connection dropped, even when the server had applied it), and the first
        // send wrote this record. Tokens are fresh per claim, so nobody else holds it.
        IN_PROGRESS if value.len() == IN_PROGRESS_LEN && value[1..9] == token_bytes(token) => {
            return Ok(Claim::Claimed(token));
        }
        IN_PROGRESS if value.len() == IN_PROGRESS_LEN => {
            let lease_ms = u64::from_le_bytes(value[HEADER..].try_into().map_err(too_short)?);
            return Ok(Claim::InProgress(Busy {
                fingerprint,
                lease_remaining: Some(Duration::from_millis(lease_ms)),
                waiter: None,
            }));
        }
        DONE_OK => Outcome::Ok,
        DONE_ERR => Outcome::Err,
        kind => {
            return Err(foreign(format!(
                "kind byte {kind:#04x}, {} bytes",
                value.len()
            )));
        }
    };
    Ok(Claim::Completed(Record {
        fingerprint,
        output: Output {
            outcome,
            bytes: Bytes::from(value).slice(HEADER..),
        },
    }))
}

/// A value under our prefix that no idem-redis of this layout wrote.
fn foreign(what: String) -> StoreError {
    malformed("claim", format!("not an idem record ({what})"))
}

/// A failed claim as a `StoreError`; a `WRONGTYPE` (a record in the layout of idem-redis
/// before the packed string, a hash, or any other non-string) says so.
pub(crate) fn claim_error(e: redis::RedisError) -> StoreError {
    if e.code() == Some("WRONGTYPE") {
        return malformed(
            "claim",
            "the key holds a Redis hash or another non-string: a record of an earlier \
             idem-redis layout, or someone else's data under this prefix; it is left alone \
             (it expires at its own TTL; delete it to free the key sooner)",
        );
    }
    backend("claim")(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::new(0x0102_0304_0506_0708)
    }

    fn fp() -> Fingerprint {
        Fingerprint::from_bytes([3; 32])
    }

    fn done(kind: u8, output: &[u8]) -> Vec<u8> {
        let mut value = vec![kind];
        value.extend_from_slice(&token_bytes(token()));
        value.extend_from_slice(fp().as_bytes());
        value.extend_from_slice(output);
        value
    }

    #[test]
    fn reads_each_kind() {
        assert!(matches!(claim(None, token()), Ok(Claim::Claimed(t)) if t == token()));

        let Ok(Claim::Completed(record)) = claim(Some(done(DONE_ERR, b"")), token()) else {
            panic!("not completed");
        };
        assert_eq!(record.output.outcome, Outcome::Err);
        assert!(record.output.bytes.is_empty());
        assert_eq!(record.fingerprint, fp());

        let Ok(Claim::Completed(record)) = claim(Some(done(DONE_OK, b"out")), token()) else {
            panic!("not completed");
        };
        assert_eq!(record.output.outcome, Outcome::Ok);
        assert_eq!(&record.output.bytes[..], b"out");

        // Another claimer's record (a claim that finds its own is `Claimed`: see below).
        let busy = in_progress(Token::new(9), &fp(), 1500);
        let Ok(Claim::InProgress(busy)) = claim(Some(busy), token()) else {
            panic!("not in progress");
        };
        assert_eq!(busy.fingerprint, fp());
        assert_eq!(busy.lease_remaining, Some(Duration::from_millis(1500)));
    }

    /// A claim sent twice — the cluster client resends a request whose connection dropped
    /// (`RetryMethod::Reconnect`), even when the server had applied it before the reply was
    /// lost — finds the in-progress record its own first send wrote: it owns that claim.
    #[test]
    fn a_resent_claim_finds_itself_and_owns_the_key() {
        let mine = in_progress(token(), &fp(), 1500);
        assert!(
            matches!(claim(Some(mine), token()), Ok(Claim::Claimed(t)) if t == token()),
            "own claim read back"
        );
        // Another token's claim is still someone else's.
        let theirs = in_progress(Token::new(7), &fp(), 1500);
        assert!(matches!(
            claim(Some(theirs), token()),
            Ok(Claim::InProgress(_))
        ));
    }

    #[test]
    fn foreign_values_are_errors_not_records() {
        let mut long_claim = in_progress(token(), &fp(), 1500);
        long_claim.push(0);
        let bad = [
            Vec::new(),
            b"ok".to_vec(),
            b"some text someone else stored under the prefix, long enough".to_vec(),
            done(b'd', b"out"),
            done(IN_PROGRESS, b""),
            long_claim,
            vec![DONE_OK; HEADER - 1],
        ];
        for value in bad {
            assert!(
                matches!(
                    claim(Some(value.clone()), token()),
                    Err(StoreError::Backend { .. })
                ),
                "{value:?}"
            );
        }
    }
}
