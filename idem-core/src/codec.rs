//! How recorded outputs become bytes and back.
//!
//! A stored value is
//!
//! ```text
//! [format tag: 1][shape: 8][payload][checksum: 4]
//! ```
//!
//! - the format tag names the codec, so a record written by another codec (after a change
//!   of codec) is a clean [`Error::Codec`](crate::Error::Codec), never a misread value;
//!   tags 1–3 were the whole header before shapes and checksums, and are refused as
//!   "written by an older version of idem";
//! - the [`Shape`] of the type that wrote it, so that another type under the same
//!   `name =` (an `i64` record read as a `u64`, swapped fields) is refused too;
//! - the payload, the codec's encoding of the value;
//! - a CRC-32 (IEEE) of everything before it, checked before anything is decoded, so a
//!   changed byte is refused rather than decoded into another value (last, so that it
//!   covers one contiguous run of bytes).

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::error::CodecError;
pub use crate::shape::{Shape, ShapeCell};

/// The error a [`Codec`] reports: its own error type, boxed (it becomes the
/// [`source`](std::error::Error::source) of the [`CodecError`] a caller sees).
pub type CodecFailure = Box<dyn std::error::Error + Send + Sync>;

/// Encoded values larger than this are refused, and a corrupt length prefix can never make
/// a decoder allocate more.
pub const MAX_ENCODED_LEN: usize = 64 << 20;

/// The bytes before the payload: format tag, shape.
pub const HEADER_LEN: usize = 1 + 8;

/// The bytes after the payload: the checksum.
pub const TRAILER_LEN: usize = 4;

/// Format tags of the layout before shapes and checksums (`[tag][payload]`).
const LEGACY_TAGS: std::ops::RangeInclusive<u8> = 1..=3;

/// A serde format for recorded outputs (and cached errors).
pub trait Codec: Send + Sync + 'static {
    /// The name used in error messages.
    const NAME: &'static str;
    /// The format tag that starts every value this codec stores (not 1, 2 or 3: those
    /// mark records of an older version of idem).
    const TAG: u8;
    /// Whether it can decode values that need `deserialize_any` (`serde_json::Value`,
    /// untagged enums, flattened structs).
    const SELF_DESCRIBING: bool;
    /// Its serde `is_human_readable()`: types may serialize differently for each, so the
    /// shape of a type is traced as this codec sees it.
    const HUMAN_READABLE: bool;

    /// Appends the encoding of `value` to `out`.
    fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>)
    -> Result<(), CodecFailure>;

    /// Decodes a whole value from `bytes` (trailing bytes are an error).
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecFailure>;
}

/// Encodes `value` with codec `C`, header first (the shape of `T` from the global cache;
/// see [`Shape::of`]).
pub fn encode<C: Codec, T: Serialize + DeserializeOwned>(value: &T) -> Result<Bytes, CodecError> {
    encode_shaped::<C, T>(value, Shape::of::<T>(C::HUMAN_READABLE))
}

/// Decodes bytes written by [`encode`] with codec `C` and type `T` (or one of its shape).
pub fn decode<C: Codec, T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_shaped::<C, T>(bytes, Shape::of::<T>(C::HUMAN_READABLE))
}

/// [`encode`], with the shape of `T` given.
pub fn encode_shaped<C: Codec, T: Serialize + ?Sized>(
    value: &T,
    shape: Shape,
) -> Result<Bytes, CodecError> {
    const {
        assert!(
            C::TAG < *LEGACY_TAGS.start() || C::TAG > *LEGACY_TAGS.end(),
            "format tags 1, 2 and 3 mark records of an older version of idem"
        )
    };
    let mut out = Vec::with_capacity(64);
    out.push(C::TAG);
    out.extend(shape.to_bytes());
    C::encode_into(value, &mut out)
        .map_err(|e| CodecError::with_source(C::NAME, "encode the output", e))?;
    out.extend(crc32fast::hash(&out).to_le_bytes());
    if out.len() > MAX_ENCODED_LEN {
        return Err(CodecError::new(
            C::NAME,
            "encode the output",
            format!(
                "{} bytes is more than the {MAX_ENCODED_LEN} a record may hold",
                out.len()
            ),
        ));
    }
    Ok(Bytes::from(out))
}

/// [`decode`], with the shape of `T` given.
pub fn decode_shaped<C: Codec, T: DeserializeOwned>(
    bytes: &[u8],
    shape: Shape,
) -> Result<T, CodecError> {
    let payload = open(bytes, C::TAG, shape).map_err(|refusal| refusal.error(C::NAME))?;
    C::decode(payload).map_err(|e| {
        let error = CodecError::with_source(C::NAME, DECODE, e);
        if C::SELF_DESCRIBING {
            error
        } else {
            error.note(
                "(if the type needs `deserialize_any` — serde_json::Value, #[serde(untagged)], \
                 #[serde(flatten)] — use the JSON codec: feature `json`, \
                 `codec = idem::codec::Json`)",
            )
        }
    })
}

const DECODE: &str = "decode the recorded output";

/// Why a record's header or checksum was refused.
enum Refusal {
    Empty,
    Legacy,
    Truncated(usize),
    Corrupt,
    OtherCodec(u8),
    OtherShape { written: Shape, expected: Shape },
}

/// The payload of a record of format `tag` and shape `shape`, checksum verified. Not
/// generic, and its errors are built apart: the replay path stays small.
fn open(bytes: &[u8], tag: u8, shape: Shape) -> Result<&[u8], Refusal> {
    let Some(&written_tag) = bytes.first() else {
        return Err(Refusal::Empty);
    };
    if LEGACY_TAGS.contains(&written_tag) {
        return Err(Refusal::Legacy);
    }
    let Some(body_len) = bytes
        .len()
        .checked_sub(TRAILER_LEN)
        .filter(|&n| n >= HEADER_LEN)
    else {
        return Err(Refusal::Truncated(bytes.len()));
    };
    let (body, stored) = bytes.split_at(body_len);
    if stored != crc32fast::hash(body).to_le_bytes() {
        return Err(Refusal::Corrupt);
    }
    if written_tag != tag {
        return Err(Refusal::OtherCodec(written_tag));
    }
    let written = Shape::from_bytes(body[1..HEADER_LEN].try_into().expect("8 bytes"));
    if written != shape {
        return Err(Refusal::OtherShape {
            written,
            expected: shape,
        });
    }
    Ok(&body[HEADER_LEN..])
}

impl Refusal {
    #[cold]
    fn error(self, codec: &'static str) -> CodecError {
        let detail = match self {
            Refusal::Empty => "the record is empty".to_owned(),
            Refusal::Legacy => "the record was written by an older version of idem (before \
                                shapes and checksums) and cannot be replayed; it goes at its \
                                TTL (or purge it)"
                .to_owned(),
            Refusal::Truncated(len) => format!(
                "the record is truncated ({len} bytes, shorter than its {} bytes of header \
                 and checksum)",
                HEADER_LEN + TRAILER_LEN
            ),
            Refusal::Corrupt => {
                "the record is corrupt: its checksum does not match its bytes".to_owned()
            }
            Refusal::OtherCodec(tag) => format!(
                "it was written by another codec ({}); records made before a change of codec \
                 cannot be replayed",
                codec_name(tag)
            ),
            Refusal::OtherShape { written, expected } => {
                let unchecked = if written.is_checked() && expected.is_checked() {
                    ""
                } else {
                    " (one of the two types could not be traced and has the \"unchecked\" \
                     shape)"
                };
                format!(
                    "the record was written by a function whose output had another shape \
                     (another type under the same `name =`, or a type whose fields or \
                     variants changed){unchecked}; it cannot be replayed as this type: it goes \
                     at its TTL (or purge it)"
                )
            }
        };
        CodecError::new(codec, DECODE, detail)
    }
}

fn codec_name(tag: u8) -> &'static str {
    match tag {
        Bincode::TAG => Bincode::NAME,
        POSTCARD_TAG => "postcard",
        JSON_TAG => "json",
        _ => "unknown tag",
    }
}

const POSTCARD_TAG: u8 = 0x12;
const JSON_TAG: u8 = 0x13;

/// bincode 2 (standard configuration): compact and fast; the default.
pub struct Bincode;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENCODED_LEN>()
}

impl Codec for Bincode {
    const NAME: &'static str = "bincode";
    const TAG: u8 = 0x11;
    const SELF_DESCRIBING: bool = false;
    const HUMAN_READABLE: bool = false;

    fn encode_into<T: Serialize + ?Sized>(
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecFailure> {
        bincode::serde::encode_into_std_write(value, out, bincode_config())?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecFailure> {
        let (value, read) = bincode::serde::decode_from_slice(bytes, bincode_config())?;
        if read != bytes.len() {
            return Err(format!("{} trailing bytes", bytes.len() - read).into());
        }
        Ok(value)
    }
}

/// postcard: the most compact encoding (feature `postcard`).
#[cfg(feature = "postcard")]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Codec for Postcard {
    const NAME: &'static str = "postcard";
    const TAG: u8 = POSTCARD_TAG;
    const SELF_DESCRIBING: bool = false;
    const HUMAN_READABLE: bool = false;

    fn encode_into<T: Serialize + ?Sized>(
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecFailure> {
        *out = postcard::to_extend(value, std::mem::take(out))?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecFailure> {
        let (value, rest) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes", rest.len()).into());
        }
        Ok(value)
    }
}

/// JSON: self-describing, so it round-trips `serde_json::Value` and untagged enums
/// (feature `json`).
#[cfg(feature = "json")]
pub struct Json;

#[cfg(feature = "json")]
impl Codec for Json {
    const NAME: &'static str = "json";
    const TAG: u8 = JSON_TAG;
    const SELF_DESCRIBING: bool = true;
    const HUMAN_READABLE: bool = true;

    fn encode_into<T: Serialize + ?Sized>(
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecFailure> {
        Ok(serde_json::to_writer(out, value)?)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecFailure> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `payload` with format tag `tag` and `T`'s shape, with a valid checksum.
    fn sealed<T: DeserializeOwned>(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(Shape::of::<T>(false).to_bytes());
        out.extend(payload);
        out.extend(crc32fast::hash(&out).to_le_bytes());
        out
    }

    #[test]
    fn round_trip_and_falsy_values() {
        let bytes = encode::<Bincode, _>(&(1u32, "x".to_string())).unwrap();
        assert_eq!(bytes[0], Bincode::TAG);
        assert_eq!(
            decode::<Bincode, (u32, String)>(&bytes).unwrap(),
            (1, "x".into())
        );
        let unit = encode::<Bincode, _>(&()).unwrap();
        assert_eq!(unit.len(), HEADER_LEN + TRAILER_LEN);
        decode::<Bincode, ()>(&unit).unwrap();
        let none = encode::<Bincode, _>(&None::<u8>).unwrap();
        assert_eq!(decode::<Bincode, Option<u8>>(&none).unwrap(), None);
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        assert!(decode::<Bincode, u8>(&[]).is_err());
        let err =
            decode::<Bincode, String>(&sealed::<String>(Bincode::TAG, &[0xff, 0xff])).unwrap_err();
        assert!(
            err.to_string().contains("bincode could not decode"),
            "{err}"
        );
        // A length prefix claiming 2^60 elements must not allocate.
        let mut huge = vec![0xff];
        huge.extend(1u64.rotate_right(4).to_le_bytes());
        assert!(decode::<Bincode, Vec<u64>>(&sealed::<Vec<u64>>(Bincode::TAG, &huge)).is_err());
        let err = decode::<Bincode, u8>(&sealed::<u8>(JSON_TAG, b"1")).unwrap_err();
        assert!(err.to_string().contains("another codec (json)"), "{err}");
        let trailing = decode::<Bincode, u8>(&sealed::<u8>(Bincode::TAG, &[1, 2])).unwrap_err();
        assert!(trailing.to_string().contains("trailing"), "{trailing}");
        for short in [&[Bincode::TAG, 0, 0][..], &[Bincode::TAG; 12]] {
            let err = decode::<Bincode, u8>(short).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    #[test]
    fn records_of_the_old_layout_are_refused_as_such() {
        // `[tag][payload]`, tags 1 (bincode), 2 (postcard), 3 (json): never misread.
        for old in [vec![1, 42], vec![2, 42], vec![3, b'4', b'2'], vec![1]] {
            let err = decode::<Bincode, u8>(&old).unwrap_err();
            assert!(err.to_string().contains("older version of idem"), "{err}");
        }
    }

    #[test]
    fn a_changed_byte_is_a_checksum_error() {
        let mut bytes = encode::<Bincode, _>(&"note-1000-1".to_string())
            .unwrap()
            .to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        let err = decode::<Bincode, String>(&bytes).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn another_shape_is_refused() {
        let bytes = encode::<Bincode, _>(&-5i64).unwrap();
        for err in [
            decode::<Bincode, u64>(&bytes).unwrap_err(),
            decode::<Bincode, u8>(&bytes).unwrap_err(),
            decode::<Bincode, i32>(&bytes).unwrap_err(),
        ] {
            assert!(err.to_string().contains("another shape"), "{err}");
        }
        assert_eq!(decode::<Bincode, i64>(&bytes).unwrap(), -5);
    }

    #[test]
    fn deserialize_any_hint() {
        let value = serde_json::json!({"a": 1});
        let bytes = encode::<Bincode, _>(&value).unwrap();
        let err = decode::<Bincode, serde_json::Value>(&bytes).unwrap_err();
        assert!(err.to_string().contains("JSON codec"), "{err}");
    }

    #[test]
    fn the_codecs_error_is_the_source() {
        use std::error::Error as _;
        let err =
            decode::<Bincode, String>(&sealed::<String>(Bincode::TAG, &[0xff, 0xff])).unwrap_err();
        let source = err.source().expect("the codec's error is the source");
        assert!(
            source
                .downcast_ref::<bincode::error::DecodeError>()
                .is_some(),
            "{source:?}"
        );
        // The message still says it all: codec, action, the source's message, the hint.
        assert_eq!(
            err.to_string(),
            format!(
                "bincode could not decode the recorded output: {source} (if the type needs \
                 `deserialize_any` — serde_json::Value, #[serde(untagged)], #[serde(flatten)] \
                 — use the JSON codec: feature `json`, `codec = idem::codec::Json`)"
            )
        );
        let err = crate::Error::from(err);
        assert!(err.source().is_some(), "through idem::Error too");
        // A refusal of the record's header has no underlying error.
        let err = decode::<Bincode, u8>(&[]).unwrap_err();
        assert!(err.source().is_none());
        assert_eq!(
            err.to_string(),
            "bincode could not decode the recorded output: the record is empty"
        );
    }

    #[test]
    fn a_serialize_impls_error_is_the_source() {
        use std::error::Error as _;
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no, thanks"))
            }
        }
        let err = encode_shaped::<Bincode, _>(&Refuses, Shape::of::<u8>(false)).unwrap_err();
        let source = err.source().expect("bincode's error is the source");
        assert!(source.to_string().contains("no, thanks"), "{source}");
        assert_eq!(
            err.to_string(),
            format!("bincode could not encode the output: {source}")
        );
        let err = crate::Fingerprint::of(&Refuses).unwrap_err();
        assert_eq!(err.source().unwrap().to_string(), "no, thanks");
        assert_eq!(
            err.to_string(),
            "fingerprint could not hash an argument: no, thanks"
        );
    }
}
