//! What every dialect's claim shares: its inputs, and how often it tries.

use idem_core::store::{Claim, Token};
use idem_core::{Fingerprint, Key, StoreError};
use std::time::Duration;

/// How many times a claim retries when the row changed between its statements.
pub(crate) const CLAIM_ATTEMPTS: usize = 8;

/// One claim: the key, and what its insert (or takeover) writes.
#[derive(Clone, Copy)]
pub struct NewClaim<'a> {
    pub(crate) key: &'a Key,
    pub(crate) fingerprint: &'a Fingerprint,
    pub(crate) lease: Duration,
    /// Its fencing token, made on the client before the insert (see `token.rs`).
    pub(crate) token: i64,
}

impl<'a> NewClaim<'a> {
    /// The key's digest, as statements bind it.
    pub(crate) fn digest(&self) -> &'a [u8] {
        &self.key.digest().as_bytes()[..]
    }

    /// What the claim returns once its write took the key.
    pub(crate) fn claimed(&self) -> Claim {
        Claim::Claimed(Token::new(self.token as u64))
    }
}

/// A claim that tried [`CLAIM_ATTEMPTS`] times and found the row changed every time.
pub(crate) fn kept_changing() -> StoreError {
    StoreError::backend("claim", "the record kept changing under concurrent claims")
}
