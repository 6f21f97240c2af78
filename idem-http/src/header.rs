//! The idempotency key header: an RFC 8941 sf-string (`"abc"`), or a bare value (`abc`, as
//! Stripe's clients send it) taken as the same key.

use std::borrow::Cow;

use http::HeaderValue;

/// The header the IETF draft (draft-ietf-httpapi-idempotency-key-header) names.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The longest key accepted by default, in characters (the draft leaves it to the
/// resource; Stripe allows 255).
pub const DEFAULT_MAX_KEY_LEN: usize = 255;

/// Why an idempotency key header is refused (HTTP 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The header is absent.
    #[error("the request has no idempotency key header")]
    Missing,
    /// The key is the empty string.
    #[error("the idempotency key is empty")]
    Empty,
    /// The key is longer than allowed.
    #[error("the idempotency key is longer than {max} characters")]
    TooLong {
        /// The longest key accepted.
        max: usize,
    },
    /// The header is sent more than once.
    #[error("the idempotency key header is sent more than once")]
    Repeated,
    /// The header is neither an sf-string nor a bare key of visible ASCII characters.
    #[error("the idempotency key is malformed: {0}")]
    Malformed(&'static str),
}

/// The key in a request's header values (all of them: a repeated header is refused, as two
/// keys cannot both be the request's). Borrowed from the header unless it has escapes.
pub(crate) fn key_of<'a>(
    mut values: impl Iterator<Item = &'a HeaderValue>,
    max_len: usize,
) -> Result<Cow<'a, str>, KeyError> {
    let value = values.next().ok_or(KeyError::Missing)?;
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    parse(value.as_bytes(), max_len)
}

/// One header value's key.
pub(crate) fn parse(value: &[u8], max_len: usize) -> Result<Cow<'_, str>, KeyError> {
    let value = value.trim_ascii();
    let key = if value.first() == Some(&b'"') {
        sf_string(value)?
    } else {
        bare(value)?
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    // Keys are ASCII here (both forms only admit ASCII), so bytes are characters.
    if key.len() > max_len {
        return Err(KeyError::TooLong { max: max_len });
    }
    Ok(key)
}

/// `"..."`, with `\"` and `\\` escapes and optional parameters (ignored, as RFC 8941 says
/// unknown parameters are).
fn sf_string(value: &[u8]) -> Result<Cow<'_, str>, KeyError> {
    // The common case, `"abc"` without escapes or parameters, is the bytes between the
    // quotes (an sf-string's characters are printable ASCII); anything else goes to `sfv`.
    if let [b'"', inner @ .., b'"'] = value
        && let Some(key) = plain_sf_chars(inner)
    {
        return Ok(Cow::Borrowed(key));
    }
    let item = sfv::Parser::new(value)
        .parse_item::<sfv::Item>()
        .map_err(|_| KeyError::Malformed("not a valid structured-field string"))?;
    match item.bare_item {
        sfv::BareItem::String(s) => Ok(Cow::Owned(s.as_str().to_owned())),
        _ => Err(KeyError::Malformed("not a structured-field string")),
    }
}

/// A key sent without quotes: visible ASCII, no quote or backslash (those would be
/// ambiguous with the quoted form). UUIDs, which are not sf-tokens (they may start with a
/// digit), are accepted as they are.
fn bare(value: &[u8]) -> Result<Cow<'_, str>, KeyError> {
    if let Some(&c) = value
        .iter()
        .find(|&&c| !c.is_ascii_graphic() || c == b'"' || c == b'\\')
    {
        return Err(KeyError::Malformed(if c == b' ' || c == b'\t' {
            "a key without quotes must not contain whitespace"
        } else if c.is_ascii() {
            "a key without quotes must not contain quotes, backslashes or control characters"
        } else {
            "the key must be ASCII"
        }));
    }
    // Only ASCII bytes passed the check above.
    Ok(String::from_utf8_lossy(value))
}

/// The bytes as a string if they are all sf-string characters other than `"` and `\\`
/// (printable ASCII, space included): an sf-string's content without escapes.
fn plain_sf_chars(inner: &[u8]) -> Option<&str> {
    if inner
        .iter()
        .all(|&c| (b' '..=b'~').contains(&c) && c != b'"' && c != b'\\')
    {
        std::str::from_utf8(inner).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &str) -> Result<String, KeyError> {
        parse(v.as_bytes(), DEFAULT_MAX_KEY_LEN).map(Cow::into_owned)
    }

    #[test]
    fn quoted_and_bare_are_one_key() {
        assert_eq!(key("\"abc\"").unwrap(), "abc");
        assert_eq!(key("abc").unwrap(), "abc");
        assert_eq!(key("  \"abc\"  ").unwrap(), "abc");
    }

    #[test]
    fn plain_keys_are_borrowed() {
        assert!(matches!(parse(b"abc", 255), Ok(Cow::Borrowed("abc"))));
        assert!(matches!(parse(b"\"a b\"", 255), Ok(Cow::Borrowed("a b"))));
        assert!(matches!(parse(br#""a\"b""#, 255), Ok(Cow::Owned(k)) if k == "a\"b"));
        assert!(matches!(parse(b"\"abc\";v=\"x\"", 255), Ok(Cow::Owned(k)) if k == "abc"));
    }

    #[test]
    fn uuids_and_stripe_keys_pass_bare() {
        let uuid = "0190b2a4-8f5e-7c3d-9a1b-2c3d4e5f6a7b";
        assert_eq!(key(uuid).unwrap(), uuid);
        assert_eq!(key("txn_001").unwrap(), "txn_001");
        assert_eq!(
            key("8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap().len(),
            36
        );
    }

    #[test]
    fn escapes_and_spaces_inside_quotes() {
        assert_eq!(key(r#""a \"b\" \\c""#).unwrap(), r#"a "b" \c"#);
        assert_eq!(key("\"a b\"").unwrap(), "a b");
    }

    #[test]
    fn parameters_are_ignored() {
        assert_eq!(key("\"abc\";v=1").unwrap(), "abc");
    }

    #[test]
    fn empty_is_refused() {
        assert_eq!(key("\"\""), Err(KeyError::Empty));
        assert_eq!(key(""), Err(KeyError::Empty));
        assert_eq!(key("   "), Err(KeyError::Empty));
    }

    #[test]
    fn long_keys_are_refused() {
        let max = "k".repeat(DEFAULT_MAX_KEY_LEN);
        assert_eq!(key(&max).unwrap(), max);
        assert_eq!(key(&format!("\"{max}\"")).unwrap(), max);
        let over = "k".repeat(DEFAULT_MAX_KEY_LEN + 1);
        assert_eq!(key(&over), Err(KeyError::TooLong { max: 255 }));
        assert_eq!(parse(b"abcd", 3), Err(KeyError::TooLong { max: 3 }));
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "\"abc",
            "\"a\"b\"",
            "a b",
            "ab\"c",
            "a\\b",
            "\"\\x\"",
            "\"abc\" \"def\"",
            "\"\u{e9}\"",
            "\u{e9}t\u{e9}",
        ] {
            assert!(
                matches!(key(bad), Err(KeyError::Malformed(_))),
                "{bad:?} → {:?}",
                key(bad)
            );
        }
        assert!(matches!(parse(b"a\x01b", 255), Err(KeyError::Malformed(_))));
        assert!(matches!(
            parse(b"\"a\x7fb\"", 255),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn a_repeated_header_is_refused() {
        let v = HeaderValue::from_static("abc");
        assert_eq!(key_of([&v, &v].into_iter(), 255), Err(KeyError::Repeated));
        assert_eq!(key_of(std::iter::empty(), 255), Err(KeyError::Missing));
        assert_eq!(key_of([&v].into_iter(), 255).unwrap(), "abc");
    }
}
