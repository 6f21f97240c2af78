//! Fencing tokens for SQL stores: random, so that a key claimed again after a release never
//! gets a token an earlier owner might still hold.

use idem_core::store::Token;
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A random positive i64 (the column is a signed BIGINT everywhere).
pub(crate) fn fresh() -> i64 {
    // RandomState is keyed from the OS's randomness once per process; hashing a counter
    // and the time through it gives unpredictable, practically unique values.
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let hash = KEYS.get_or_init(RandomState::new).hash_one((
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos,
        std::process::id(),
    ));
    (hash >> 1) as i64
}

/// A token as the `token` column holds it.
pub(crate) fn value(token: Token) -> i64 {
    token.get() as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_differ_and_are_positive() {
        let tokens: std::collections::HashSet<i64> = (0..10_000).map(|_| super::fresh()).collect();
        assert_eq!(tokens.len(), 10_000);
        assert!(tokens.iter().all(|t| *t >= 0));
    }
}
