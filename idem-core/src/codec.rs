//! How recorded outputs become bytes and back.
//!
//! Stored bytes start with the codec's one-byte tag, so records written by another codec
//! (after a change of codec) are a clean [`Error::Codec`](crate::Error::Codec), never a
//! misread value.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::error::CodecError;

/// Encoded values larger than this are refused, and a corrupt length prefix can never make
/// a decoder allocate more.
pub const MAX_ENCODED_LEN: usize = 64 << 20;

/// A serde format for recorded outputs (and cached errors).
pub trait Codec: Send + Sync + 'static {
    /// The name used in error messages.
    const NAME: &'static str;
    /// The format tag that starts every value this codec stores.
    const TAG: u8;
    /// Whether it can decode values that need `deserialize_any` (`serde_json::Value`,
    /// untagged enums, flattened structs).
    const SELF_DESCRIBING: bool;

    /// Appends the encoding of `value` to `out`.
    fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String>;

    /// Decodes a whole value from `bytes` (trailing bytes are an error).
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String>;
}

/// Encodes `value` with codec `C`, tag first.
pub fn encode<C: Codec, T: Serialize + ?Sized>(value: &T) -> Result<Bytes, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(C::TAG);
    C::encode_into(value, &mut out)
        .map_err(|e| CodecError::new(C::NAME, "encode the output", e))?;
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

/// Decodes bytes written by [`encode`] with codec `C`.
pub fn decode<C: Codec, T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    const ACTION: &str = "decode the recorded output";
    match bytes.split_first() {
        None => Err(CodecError::new(C::NAME, ACTION, "the record is empty")),
        Some((&tag, body)) if tag == C::TAG => C::decode(body).map_err(|e| {
            let hint = if C::SELF_DESCRIBING {
                ""
            } else {
                " (if the type needs `deserialize_any` — serde_json::Value, #[serde(untagged)], \
                 #[serde(flatten)] — use the JSON codec: feature `json`, `codec = idem::codec::Json`)"
            };
            CodecError::new(C::NAME, ACTION, format!("{e}{hint}"))
        }),
        Some((&tag, _)) => Err(CodecError::new(
            C::NAME,
            ACTION,
            format!(
                "it was written by another codec ({}); records made before a change of codec \
                 cannot be replayed",
                codec_name(tag)
            ),
        )),
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

const POSTCARD_TAG: u8 = 2;
const JSON_TAG: u8 = 3;

/// bincode 2 (standard configuration): compact and fast; the default.
pub struct Bincode;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENCODED_LEN>()
}

impl Codec for Bincode {
    const NAME: &'static str = "bincode";
    const TAG: u8 = 1;
    const SELF_DESCRIBING: bool = false;

    fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
        bincode::serde::encode_into_std_write(value, out, bincode_config())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        let (value, read) = bincode::serde::decode_from_slice(bytes, bincode_config())
            .map_err(|e| e.to_string())?;
        if read != bytes.len() {
            return Err(format!("{} trailing bytes", bytes.len() - read));
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

    fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
        let encoded = postcard::to_extend(value, std::mem::take(out)).map_err(|e| e.to_string())?;
        *out = encoded;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes", rest.len()));
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

    fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
        serde_json::to_writer(out, value).map_err(|e| e.to_string())
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_falsy_values() {
        let bytes = encode::<Bincode, _>(&(1u32, "x")).unwrap();
        assert_eq!(bytes[0], Bincode::TAG);
        assert_eq!(
            decode::<Bincode, (u32, String)>(&bytes).unwrap(),
            (1, "x".into())
        );
        let unit = encode::<Bincode, _>(&()).unwrap();
        assert_eq!(unit.len(), 1);
        decode::<Bincode, ()>(&unit).unwrap();
        let none = encode::<Bincode, _>(&None::<u8>).unwrap();
        assert_eq!(decode::<Bincode, Option<u8>>(&none).unwrap(), None);
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        assert!(decode::<Bincode, u8>(&[]).is_err());
        assert!(decode::<Bincode, String>(&[Bincode::TAG, 0xff, 0xff]).is_err());
        // A length prefix claiming 2^60 elements must not allocate.
        let mut huge = vec![Bincode::TAG, 0xff];
        huge.extend(1u64.rotate_right(4).to_le_bytes());
        assert!(decode::<Bincode, Vec<u64>>(&huge).is_err());
        let err = decode::<Bincode, u8>(&[JSON_TAG, b'1']).unwrap_err();
        assert!(err.to_string().contains("another codec (json)"), "{err}");
        let trailing = decode::<Bincode, u8>(&[Bincode::TAG, 1, 2]).unwrap_err();
        assert!(trailing.to_string().contains("trailing"), "{trailing}");
    }

    #[test]
    fn deserialize_any_hint() {
        let value = serde_json::json!({"a": 1});
        let bytes = encode::<Bincode, _>(&value).unwrap();
        let err = decode::<Bincode, serde_json::Value>(&bytes).unwrap_err();
        assert!(err.to_string().contains("JSON codec"), "{err}");
    }
}
