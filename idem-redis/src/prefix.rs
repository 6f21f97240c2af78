//! The key prefix: validated once, because it goes into every key.

use idem_core::Error;

/// The prefix of every record's key unless [`RedisStore::with_prefix`] says otherwise.
///
/// [`RedisStore::with_prefix`]: crate::RedisStore::with_prefix
pub const DEFAULT_PREFIX: &str = "idem:";

/// The longest prefix accepted, in bytes: a prefix namespaces keys, it is not data, and
/// every record's key carries it.
const MAX_LEN: usize = 128;

/// Checks a key prefix: non-empty, at most [`MAX_LEN`] bytes of printable ASCII without
/// spaces, and no `{` or `}` — braces would make Redis Cluster hash only the part between
/// them (a hash tag), so records would no longer spread over slots by their digest.
pub(crate) fn validate(prefix: &str) -> Result<(), Error> {
    let refuse = |why: &str| {
        Err(Error::Config(format!(
            "invalid Redis key prefix {prefix:?}: {why}"
        )))
    };
    if prefix.is_empty() {
        return refuse("it must not be empty");
    }
    if prefix.len() > MAX_LEN {
        return refuse(&format!("it is longer than {MAX_LEN} bytes"));
    }
    if let Some(c) = prefix.chars().find(|c| !c.is_ascii_graphic()) {
        return refuse(&format!(
            "{c:?} is not allowed (printable ASCII without spaces only)"
        ));
    }
    if prefix.contains(['{', '}']) {
        return refuse("`{` and `}` would change which Redis Cluster slot a key hashes to");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_prefixes() {
        for ok in [
            DEFAULT_PREFIX,
            "a",
            "billing:idem:",
            "x-1_2/3.",
            &"p".repeat(MAX_LEN),
        ] {
            assert!(validate(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn refuses_hostile_prefixes() {
        let long = "p".repeat(MAX_LEN + 1);
        for bad in [
            "", "{tag}", "a{", "}", "a b", "a\nb", "a\0", "é", "\u{7f}", &long,
        ] {
            assert!(matches!(validate(bad), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
