//! Idempotency keys: what a key may be made of, and the fixed-size digest stores index.

use sha2::{Digest, Sha256};
use std::fmt::{self, Write as _};

use crate::Error;

/// How many characters of `scope/key` the operator-facing preview keeps.
const PREVIEW_CHARS: usize = 64;
/// How many bytes of it are kept inline (all of an ASCII preview), plus 3 for a `…`.
const INLINE_BYTES: usize = 64;

/// A value an idempotency key (or scope) can be made of.
///
/// Every key is text: `42u32`, `42i64` and `"42"` are the same key, so a key read from an
/// HTTP header matches one taken from a numeric field. Tuples make composite keys whose
/// parts stay separate (`("ab", "c")` and `("a", "bc")` differ). `None` is
/// [`Error::MissingKey`], an empty part [`Error::InvalidKey`].
pub trait IntoKey {
    /// Writes this key's parts to `out`.
    fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error>;
}

/// Receives the text parts of a key; see [`IntoKey`].
pub struct KeyWriter {
    hasher: Sha256,
    preview: Preview,
}

impl KeyWriter {
    /// Adds one text part. An empty part is [`Error::InvalidKey`].
    pub fn part(&mut self, text: &str) -> Result<(), Error> {
        if text.is_empty() {
            return Err(Error::InvalidKey);
        }
        self.preview.separate();
        self.preview.push(text);
        hash_part(&mut self.hasher, text.as_bytes());
        Ok(())
    }

    /// Adds one part rendered with `Display` (integers, UUIDs).
    pub fn display(&mut self, value: impl fmt::Display) -> Result<(), Error> {
        // Integers and UUIDs fit on the stack; anything longer takes a String.
        let mut small = Preview::default();
        if write!(small, "{value}").is_ok() && !small.truncated {
            return self.part(small.as_str());
        }
        self.part(&value.to_string())
    }
}

/// A short string: the preview of a key. Inline, without a heap allocation per call, while
/// it fits in `INLINE_BYTES` (every ASCII key); a preview of wider characters moves to the
/// heap. (Small: a `Key` travels by value through the executor.)
#[derive(Clone)]
struct Preview {
    bytes: [u8; INLINE_BYTES + 3],
    len: u8,
    chars: u8,
    truncated: bool,
    // Boxed: one pointer instead of a `String`'s three keeps every `Key` small.
    #[allow(clippy::box_collection)]
    wide: Option<Box<String>>,
}

impl Default for Preview {
    fn default() -> Self {
        Preview {
            bytes: [0; INLINE_BYTES + 3],
            len: 0,
            chars: 0,
            truncated: false,
            wide: None,
        }
    }
}

impl Preview {
    /// Appends what fits in `PREVIEW_CHARS` characters.
    fn push(&mut self, text: &str) {
        let room = PREVIEW_CHARS - usize::from(self.chars);
        let (take, chars) = if text.is_ascii() {
            let take = text.len().min(room);
            (take, take)
        } else {
            match text.char_indices().nth(room) {
                Some((cut, _)) => (cut, room),
                None => (text.len(), text.chars().count()),
            }
        };
        let part = &text[..take];
        let len = usize::from(self.len);
        match &mut self.wide {
            Some(wide) => wide.push_str(part),
            None if len + take <= INLINE_BYTES => {
                self.bytes[len..len + take].copy_from_slice(part.as_bytes());
                // At most `INLINE_BYTES` (64).
                self.len += take as u8;
            }
            None => {
                let mut wide = String::with_capacity(PREVIEW_CHARS * 4 + 3);
                wide.push_str(self.inline());
                wide.push_str(part);
                self.wide = Some(Box::new(wide));
            }
        }
        // At most `PREVIEW_CHARS` (64).
        self.chars += chars as u8;
        self.truncated |= take < text.len();
    }

    /// `:` between parts of a composite key (not right after the scope's `/`).
    fn separate(&mut self) {
        if !self.as_str().is_empty() && !self.as_str().ends_with('/') {
            self.push(":");
        }
    }

    /// Marks a cut preview with `…` (inline: in the 3 spare bytes).
    fn finish(mut self) -> Self {
        if self.truncated {
            const ELLIPSIS: &str = "…";
            match &mut self.wide {
                Some(wide) => wide.push_str(ELLIPSIS),
                None => {
                    let len = usize::from(self.len);
                    self.bytes[len..len + ELLIPSIS.len()].copy_from_slice(ELLIPSIS.as_bytes());
                    self.len += ELLIPSIS.len() as u8;
                }
            }
        }
        self
    }

    fn inline(&self) -> &str {
        // Only whole characters are ever copied in.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    fn as_str(&self) -> &str {
        match &self.wide {
            Some(wide) => wide,
            None => self.inline(),
        }
    }
}

impl fmt::Write for Preview {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s);
        if self.truncated {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

const PART: u8 = 1;
const SECTION_END: u8 = 2;

fn hash_part(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update([PART]);
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// The fixed-size digest of `(namespace, scope, key)` that stores index.
///
/// Stores never see raw key text in their index: no length limits, nothing to inject.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A digest from bytes a store read back.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        KeyDigest(bytes)
    }

    /// The first 8 bytes in hex: enough to correlate logs, never the raw key. Formatted
    /// only when displayed (nothing is allocated before), so every call's span can carry it.
    pub fn short(&self) -> impl fmt::Display + use<> {
        let mut prefix = [0; 8];
        prefix.copy_from_slice(&self.0[..8]);
        ShortDigest(prefix)
    }
}

/// [`KeyDigest::short`]: the digest's first 8 bytes, displayed in hex.
struct ShortDigest([u8; 8]);

impl fmt::Display for ShortDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({})", hex(&self.0))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A resolved idempotency key: its digest, its namespace and a short readable preview.
#[derive(Clone)]
pub struct Key {
    digest: KeyDigest,
    namespace: &'static str,
    preview: Preview,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("digest", &self.digest)
            .field("namespace", &self.namespace)
            .field("preview", &self.preview.as_str())
            .finish()
    }
}

impl Key {
    /// The key `key` in `namespace` (by default the function's path), without a scope.
    pub fn new<K: IntoKey + ?Sized>(namespace: &'static str, key: &K) -> Result<Key, Error> {
        Self::build(namespace, None::<&str>, key)
    }

    /// The key `key` under `scope` (a tenant or user) in `namespace`.
    pub fn scoped<S: IntoKey + ?Sized, K: IntoKey + ?Sized>(
        namespace: &'static str,
        scope: &S,
        key: &K,
    ) -> Result<Key, Error> {
        Self::build(namespace, Some(scope), key)
    }

    fn build<S: IntoKey + ?Sized, K: IntoKey + ?Sized>(
        namespace: &'static str,
        scope: Option<&S>,
        key: &K,
    ) -> Result<Key, Error> {
        let mut hasher = Sha256::new();
        hasher.update(b"idem/key/v1\0");
        hash_part(&mut hasher, namespace.as_bytes());
        let mut w = KeyWriter {
            hasher,
            preview: Preview::default(),
        };
        if let Some(scope) = scope {
            scope.write_key(&mut w)?;
            w.preview.push("/");
        }
        w.hasher.update([SECTION_END]);
        key.write_key(&mut w)?;
        w.hasher.update([SECTION_END]);
        Ok(Key {
            digest: KeyDigest(w.hasher.finalize().into()),
            namespace,
            preview: w.preview.finish(),
        })
    }

    /// The digest stores index.
    pub fn digest(&self) -> &KeyDigest {
        &self.digest
    }

    /// The namespace (function path or `name =`).
    pub fn namespace(&self) -> &'static str {
        self.namespace
    }

    /// The scope and key as text, cut to 64 characters (and then ending in `…`), for
    /// operators (`scope/key`). Raw text: a store whose column cannot hold some character
    /// (PostgreSQL `TEXT` and NUL) escapes it.
    pub fn preview(&self) -> &str {
        self.preview.as_str()
    }
}

impl IntoKey for str {
    fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error> {
        out.part(self)
    }
}

impl IntoKey for String {
    fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error> {
        out.part(self)
    }
}

impl IntoKey for std::borrow::Cow<'_, str> {
    fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error> {
        out.part(self)
    }
}

impl<T: IntoKey + ?Sized> IntoKey for &T {
    fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error> {
        (**self).write_key(out)
    }
}

impl<T: IntoKey + ?Sized> IntoKey for Box<T> {
    fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error> {
        (**self).write_key(out)
    }
}

impl<T: IntoKey + ?Sized> IntoKey for std::sync::Arc<T> {
    fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error> {
        (**self).write_key(out)
    }
}

impl<T: IntoKey> IntoKey for Option<T> {
    fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error> {
        match self {
            Some(key) => key.write_key(out),
            None => Err(Error::MissingKey),
        }
    }
}

macro_rules! display_keys {
    ($($t:ty),*) => {$(
        impl IntoKey for $t {
            fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error> {
                out.display(self)
            }
        }
    )*};
}

// Integers in decimal, as `Display` writes them, but without `core::fmt`'s machinery.
macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl IntoKey for $t {
            fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error> {
                out.part(itoa::Buffer::new().format(*self))
            }
        }
    )*};
}

integer_keys!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

display_keys!(char);

#[cfg(feature = "uuid")]
display_keys!(uuid::Uuid);

macro_rules! tuple_keys {
    ($(($($n:tt $t:ident),+))*) => {$(
        impl<$($t: IntoKey),+> IntoKey for ($($t,)+) {
            fn write_key(&self, out: &mut KeyWriter) -> Result<(), Error> {
                $(self.$n.write_key(out)?;)+
                Ok(())
            }
        }
    )*};
}

tuple_keys! {
    (0 A, 1 B)
    (0 A, 1 B, 2 C)
    (0 A, 1 B, 2 C, 3 D)
    (0 A, 1 B, 2 C, 3 D, 4 E)
    (0 A, 1 B, 2 C, 3 D, 4 E, 5 F)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest<K: IntoKey + ?Sized>(k: &K) -> KeyDigest {
        *Key::new("ns", k).unwrap().digest()
    }

    #[test]
    fn integers_and_text_are_the_same_key() {
        assert_eq!(digest(&42u32), digest(&42i64));
        assert_eq!(digest(&42u8), digest("42"));
        assert_ne!(digest(&42u8), digest(&43u8));
        assert_eq!(digest(&-42i8), digest("-42"));
        assert_eq!(digest(&u128::MAX), digest(&u128::MAX.to_string()));
        assert_eq!(digest(&i64::MIN), digest(&i64::MIN.to_string()));
        assert_eq!(Key::new("ns", &-7i32).unwrap().preview(), "-7");
    }

    #[test]
    fn tuple_parts_stay_separate() {
        assert_ne!(digest(&("ab", "c")), digest(&("a", "bc")));
        assert_ne!(digest(&("a", "b")), digest("a:b"));
    }

    #[test]
    fn scope_and_namespace_separate_keys() {
        let plain = Key::new("ns", "k").unwrap();
        let scoped = Key::scoped("ns", "u1", "k").unwrap();
        let other_scope = Key::scoped("ns", "u2", "k").unwrap();
        let other_ns = Key::new("ns2", "k").unwrap();
        assert_ne!(plain.digest(), scoped.digest());
        assert_ne!(scoped.digest(), other_scope.digest());
        assert_ne!(plain.digest(), other_ns.digest());
        // Moving a part between scope and key makes another key.
        let a = Key::scoped("ns", &("u", "v"), "k").unwrap();
        let b = Key::scoped("ns", "u", &("v", "k")).unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_eq!(scoped.preview(), "u1/k");
    }

    #[test]
    fn none_is_missing_and_empty_is_invalid() {
        assert!(matches!(
            Key::new("ns", &None::<String>),
            Err(Error::MissingKey)
        ));
        assert!(matches!(Key::new("ns", ""), Err(Error::InvalidKey)));
        assert!(matches!(Key::new("ns", &("a", "")), Err(Error::InvalidKey)));
        assert!(matches!(
            Key::scoped("ns", &None::<u64>, "k"),
            Err(Error::MissingKey)
        ));
    }

    #[test]
    fn preview_is_cut() {
        let long = "x".repeat(500);
        let key = Key::new("ns", &long).unwrap();
        assert_eq!(key.preview(), format!("{}…", "x".repeat(PREVIEW_CHARS)));
        assert!(key.preview.wide.is_none(), "an ASCII preview stays inline");
        // 64 characters, whatever their width (README says characters).
        for wide in ["é", "€", "𝄞"] {
            let key = Key::new("ns", &wide.repeat(100)).unwrap();
            assert_eq!(key.preview(), format!("{}…", wide.repeat(PREVIEW_CHARS)));
            let key = Key::new("ns", &wide.repeat(PREVIEW_CHARS)).unwrap();
            assert_eq!(key.preview(), wide.repeat(PREVIEW_CHARS), "not cut");
        }
        // Across a scope and a composite key.
        let key = Key::scoped("ns", &"é".repeat(10), &("ab", "€".repeat(100))).unwrap();
        let want = format!("{}/ab:{}…", "é".repeat(10), "€".repeat(PREVIEW_CHARS - 14));
        assert_eq!(key.preview(), want);
        assert_eq!(key.preview().chars().count(), PREVIEW_CHARS + 1);
        let wide = "é".repeat(100);
        let key = Key::new("ns", &wide).unwrap();
        // Long Display values still hash whole.
        assert_ne!(digest(&u128::MAX), digest(&(u128::MAX - 1)));
        let short = key.digest().short().to_string();
        assert_eq!(short, hex(&key.digest().as_bytes()[..8]));
        assert_eq!(short.len(), 16);
    }
}
