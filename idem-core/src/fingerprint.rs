//! Request fingerprints: a canonical, streaming SHA-256 over the hashed arguments.
//!
//! The serializer below feeds serde's data model straight into the hasher, with every value
//! type-tagged and length-delimited, so `("ab", "c")` and `("a", "bc")` differ. Maps are
//! canonical: each entry is hashed on its own and the entry digests are sorted, so a
//! `HashMap` or a JSON object hashes the same whatever its iteration order. Only maps
//! allocate (one digest per entry); structs, sequences and scalars stream.
//!
//! SHA-256 rather than BLAKE3: with SHA instructions (on the CPUs we measured) it is the
//! faster of the two for payloads up to a few KiB, which is what requests are
//! (`benches/fingerprint.rs`).

use serde::ser::{self, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use crate::error::CodecError;

/// The 256-bit fingerprint of a request's hashed arguments.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of one value.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, CodecError> {
        let mut builder = FingerprintBuilder::new();
        builder.arg(value);
        builder.finish()
    }

    /// The fingerprint's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A fingerprint from bytes a store read back.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", crate::key::hex(&self.0[..8]))
    }
}

/// Builds a fingerprint over several arguments in order; the first error is kept for
/// [`finish`](FingerprintBuilder::finish).
pub struct FingerprintBuilder {
    hasher: Sha256,
    error: Option<String>,
}

impl Default for FingerprintBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FingerprintBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"idem/fp/v1\0");
        FingerprintBuilder {
            hasher,
            error: None,
        }
    }

    /// Hashes one more argument.
    pub fn arg<T: Serialize + ?Sized>(&mut self, value: &T) {
        if self.error.is_none()
            && let Err(e) = value.serialize(Hasher(&mut self.hasher))
        {
            self.error = Some(e.0);
        }
    }

    /// The fingerprint, or the error of an argument whose `Serialize` failed.
    pub fn finish(self) -> Result<Fingerprint, CodecError> {
        match self.error {
            Some(e) => Err(CodecError::new("fingerprint", "hash an argument", e)),
            None => Ok(Fingerprint(self.hasher.finalize().into())),
        }
    }
}

// Type tags. Compound values end with END so that no value is a prefix of another.
const UNIT: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const BIG_UINT: u8 = 4;
const FLOAT: u8 = 5;
const STR: u8 = 6;
const BYTES: u8 = 7;
const NONE: u8 = 8;
const SOME: u8 = 9;
const SEQ: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;
const VARIANT: u8 = 13;
const END: u8 = 14;

/// The error of a value's own `Serialize` impl.
#[derive(Debug)]
struct HashError(String);

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HashError {}

impl ser::Error for HashError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        HashError(msg.to_string())
    }
}

struct Hasher<'a>(&'a mut Sha256);

impl Hasher<'_> {
    fn tag(&mut self, tag: u8) {
        self.0.update([tag]);
    }

    fn bytes(&mut self, tag: u8, bytes: &[u8]) {
        self.0.update([tag]);
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn int(&mut self, v: i128) {
        self.0.update([INT]);
        self.0.update(v.to_le_bytes());
    }

    fn reborrow(&mut self) -> Hasher<'_> {
        Hasher(self.0)
    }
}

impl<'a> ser::Serializer for Hasher<'a> {
    type Ok = ();
    type Error = HashError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = MapHasher<'a>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(mut self, v: bool) -> Result<(), HashError> {
        self.tag(if v { TRUE } else { FALSE });
        Ok(())
    }
    // All integers hash by value, so a JSON number read as i64 or u64 hashes the same.
    fn serialize_i8(mut self, v: i8) -> Result<(), HashError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i16(mut self, v: i16) -> Result<(), HashError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i32(mut self, v: i32) -> Result<(), HashError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i64(mut self, v: i64) -> Result<(), HashError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i128(mut self, v: i128) -> Result<(), HashError> {
        self.int(v);
        Ok(())
    }
    fn serialize_u8(mut self, v: u8) -> Result<(), HashError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u16(mut self, v: u16) -> Result<(), HashError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u32(mut self, v: u32) -> Result<(), HashError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u64(mut self, v: u64) -> Result<(), HashError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u128(mut self, v: u128) -> Result<(), HashError> {
        match i128::try_from(v) {
            Ok(v) => self.int(v),
            Err(_) => {
                self.tag(BIG_UINT);
                self.0.update(v.to_le_bytes());
            }
        }
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), HashError> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(mut self, v: f64) -> Result<(), HashError> {
        // -0.0 equals 0.0 and every NaN is one NaN, as far as "the same request" goes.
        let v = if v == 0.0 {
            0.0
        } else if v.is_nan() {
            f64::NAN
        } else {
            v
        };
        self.tag(FLOAT);
        self.0.update(v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), HashError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(mut self, v: &str) -> Result<(), HashError> {
        self.bytes(STR, v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(mut self, v: &[u8]) -> Result<(), HashError> {
        self.bytes(BYTES, v);
        Ok(())
    }
    fn serialize_none(mut self) -> Result<(), HashError> {
        self.tag(NONE);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(mut self, value: &T) -> Result<(), HashError> {
        self.tag(SOME);
        value.serialize(self)
    }
    fn serialize_unit(mut self) -> Result<(), HashError> {
        self.tag(UNIT);
        Ok(())
    }
    // Type names are left out so that renaming a type keeps its fingerprints.
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), HashError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), HashError> {
        self.bytes(VARIANT, variant.as_bytes());
        self.tag(UNIT);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), HashError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), HashError> {
        self.bytes(VARIANT, variant.as_bytes());
        value.serialize(self)
    }
    fn serialize_seq(mut self, _len: Option<usize>) -> Result<Self, HashError> {
        self.tag(SEQ);
        Ok(self)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self, HashError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Self, HashError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, HashError> {
        self.bytes(VARIANT, variant.as_bytes());
        self.tag(SEQ);
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapHasher<'a>, HashError> {
        Ok(MapHasher {
            parent: self.0,
            entries: Vec::with_capacity(len.unwrap_or(0)),
            entry: None,
        })
    }
    fn serialize_struct(mut self, _name: &'static str, _len: usize) -> Result<Self, HashError> {
        self.tag(STRUCT);
        Ok(self)
    }
    fn serialize_struct_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, HashError> {
        self.bytes(VARIANT, variant.as_bytes());
        self.tag(STRUCT);
        Ok(self)
    }
}

macro_rules! seq_like {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Hasher<'_> {
            type Ok = ();
            type Error = HashError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), HashError> {
                value.serialize(self.reborrow())
            }
            fn end(mut self) -> Result<(), HashError> {
                self.tag(END);
                Ok(())
            }
        }
    )*};
}

seq_like!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

macro_rules! struct_like {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Hasher<'_> {
            type Ok = ();
            type Error = HashError;
            // Field names are hashed: with `skip_serializing_if`, {a: 1} and {b: 1} differ.
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), HashError> {
                self.bytes(STR, key.as_bytes());
                value.serialize(self.reborrow())
            }
            fn end(mut self) -> Result<(), HashError> {
                self.tag(END);
                Ok(())
            }
        }
    )*};
}

struct_like!(SerializeStruct, SerializeStructVariant);

/// Hashes each entry on its own, then the sorted entry digests: order-independent.
struct MapHasher<'a> {
    parent: &'a mut Sha256,
    entries: Vec<[u8; 32]>,
    entry: Option<Sha256>,
}

impl ser::SerializeMap for MapHasher<'_> {
    type Ok = ();
    type Error = HashError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), HashError> {
        let mut entry = Sha256::new();
        key.serialize(Hasher(&mut entry))?;
        self.entry = Some(entry);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), HashError> {
        let mut entry = self
            .entry
            .take()
            .ok_or_else(|| HashError("map value serialized before its key".into()))?;
        value.serialize(Hasher(&mut entry))?;
        self.entries.push(entry.finalize().into());
        Ok(())
    }

    fn end(mut self) -> Result<(), HashError> {
        self.entries.sort_unstable();
        self.parent.update([MAP]);
        self.parent
            .update((self.entries.len() as u64).to_le_bytes());
        for entry in &self.entries {
            self.parent.update(entry);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::{BTreeMap, HashMap};

    fn fp<T: Serialize + ?Sized>(v: &T) -> Fingerprint {
        Fingerprint::of(v).unwrap()
    }

    #[test]
    fn strings_are_delimited() {
        assert_ne!(fp(&("ab", "c")), fp(&("a", "bc")));
        assert_ne!(fp(&vec!["a", "b"]), fp(&vec!["ab"]));
        assert_ne!(
            fp(&(vec![1u8], vec![2u8])),
            fp(&(vec![1u8, 2], Vec::<u8>::new()))
        );
    }

    #[test]
    fn maps_ignore_order() {
        let mut a = HashMap::new();
        let mut b = HashMap::with_capacity(64);
        for i in 0..50 {
            a.insert(format!("k{i}"), i);
        }
        for i in (0..50).rev() {
            b.insert(format!("k{i}"), i);
        }
        let sorted: BTreeMap<_, _> = a.clone().into_iter().collect();
        assert_eq!(fp(&a), fp(&b));
        assert_eq!(fp(&a), fp(&sorted));
        let x: serde_json::Value =
            serde_json::from_str(r#"{"a":1,"b":{"c":[1,2],"d":null}}"#).unwrap();
        let y: serde_json::Value =
            serde_json::from_str(r#"{"b":{"d":null,"c":[1,2]},"a":1}"#).unwrap();
        assert_eq!(fp(&x), fp(&y));
        let z: serde_json::Value =
            serde_json::from_str(r#"{"b":{"d":null,"c":[2,1]},"a":1}"#).unwrap();
        assert_ne!(fp(&x), fp(&z));
    }

    #[test]
    fn map_keys_and_values_are_bound() {
        let a: BTreeMap<&str, &str> = [("a", "b"), ("c", "d")].into();
        let b: BTreeMap<&str, &str> = [("a", "d"), ("c", "b")].into();
        assert_ne!(fp(&a), fp(&b));
    }

    #[test]
    fn skipped_fields_are_told_apart() {
        #[derive(Serialize)]
        struct S {
            #[serde(skip_serializing_if = "Option::is_none")]
            a: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            b: Option<u32>,
        }
        assert_ne!(
            fp(&S {
                a: Some(1),
                b: None
            }),
            fp(&S {
                a: None,
                b: Some(1)
            })
        );
    }

    #[test]
    fn integers_hash_by_value() {
        assert_eq!(fp(&5u8), fp(&5i64));
        assert_ne!(fp(&5u8), fp(&6u8));
        assert_ne!(fp(&5u8), fp(&5.0f64));
        assert_eq!(fp(&0.0f64), fp(&-0.0f64));
        assert_ne!(fp(&u128::MAX), fp(&-1i128));
    }

    #[test]
    fn options_and_units_differ() {
        assert_ne!(fp(&None::<u8>), fp(&Some(())));
        assert_ne!(fp(&()), fp(&None::<u8>));
        assert_ne!(fp(&Some(0u8)), fp(&0u8));
    }

    #[test]
    fn serialize_errors_are_reported() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("nope"))
            }
        }
        let err = Fingerprint::of(&Fails).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
