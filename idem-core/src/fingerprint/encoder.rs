//! The serde serializer that writes the encoding, and its tags (the table in the module docs).

use super::*;

// Tags (see the table in the module docs).
/// The largest integer that is its own tag.
pub(super) const FIXINT_MAX: u64 = 0x7F;
/// An integer ≥ 128 whose magnitude takes one byte; `+ n - 1` for `n` bytes.
pub(super) const POS_1: u8 = 0x80;
/// An integer < -32 whose `-1 - value` takes one byte; `+ n - 1` for `n` bytes.
pub(super) const NEG_1: u8 = 0x90;
/// A string of 0 bytes; `+ len` for `len` ≤ [`FIXSTR_MAX`].
pub(super) const FIXSTR: u8 = 0xA0;
pub(super) const FIXSTR_MAX: usize = 31;
pub(super) const UNIT: u8 = 0xC0;
pub(super) const FALSE: u8 = 0xC1;
pub(super) const TRUE: u8 = 0xC2;
pub(super) const NONE: u8 = 0xC3;
pub(super) const SOME: u8 = 0xC4;
pub(super) const FLOAT: u8 = 0xC5;
pub(super) const STR: u8 = 0xC6;
pub(super) const BYTES: u8 = 0xC7;
pub(super) const SEQ: u8 = 0xC8;
pub(super) const STRUCT: u8 = 0xC9;
pub(super) const MAP: u8 = 0xCA;
pub(super) const VARIANT: u8 = 0xCB;
pub(super) const END: u8 = 0xCC;
/// The negative integers -32..=-1 are their own tag (as an `i8`): `-1 - value` ≤ this.
pub(super) const NEG_FIXINT_MAX: u64 = 31;

/// The error of a value's own `Serialize` impl.
#[derive(Debug)]
pub(super) struct HashError(pub(super) String);

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

/// The serde serializer: writes one value's encoding into a [`Sink`].
pub(super) struct Encoder<'a, S>(pub(super) &'a mut S);

impl<S: Sink> Encoder<'_, S> {
    pub(super) fn reborrow(&mut self) -> Encoder<'_, S> {
        Encoder(self.0)
    }

    #[inline(always)]
    pub(super) fn tag(&mut self, tag: u8) {
        self.0.byte(tag);
    }

    /// A non-negative integer (also lengths and counts).
    #[inline(always)]
    pub(super) fn uint(&mut self, v: u64) {
        if v <= FIXINT_MAX {
            self.0.byte(v as u8);
        } else {
            self.wide(POS_1, v);
        }
    }

    /// A negative integer, given as `m = -1 - value` (that is `!value`, never negative).
    #[inline(always)]
    pub(super) fn neg(&mut self, m: u64) {
        if m <= NEG_FIXINT_MAX {
            // -1 - m as an i8: 0xFF for -1 down to 0xE0 for -32.
            self.0.byte(!(m as u8));
        } else {
            self.wide(NEG_1, m);
        }
    }

    #[inline(always)]
    pub(super) fn int(&mut self, v: i64) {
        if v >= 0 {
            self.uint(v as u64);
        } else {
            self.neg(!v as u64);
        }
    }

    /// A tag saying how many bytes `v` takes (at least one), then those bytes.
    #[inline(always)]
    pub(super) fn wide(&mut self, tag_1: u8, v: u64) {
        let n = 8 - (v.leading_zeros() / 8) as usize;
        self.0.tag_word(tag_1 + (n - 1) as u8, v, n);
    }

    // 128-bit integers that fit 64 bits take the 64-bit path, so each value has one encoding.
    pub(super) fn uint128(&mut self, v: u128) {
        match u64::try_from(v) {
            Ok(v) => self.uint(v),
            Err(_) => self.wide128(POS_1, v),
        }
    }

    pub(super) fn int128(&mut self, v: i128) {
        if v >= 0 {
            self.uint128(v as u128);
        } else {
            match u64::try_from(!v as u128) {
                Ok(m) => self.neg(m),
                Err(_) => self.wide128(NEG_1, !v as u128),
            }
        }
    }

    /// [`wide`](Self::wide) for magnitudes above `u64::MAX` (9 to 16 bytes).
    pub(super) fn wide128(&mut self, tag_1: u8, v: u128) {
        let n = 16 - (v.leading_zeros() / 8) as usize;
        self.0.byte(tag_1 + (n - 1) as u8);
        self.0.write(&v.to_le_bytes()[..n]);
    }

    #[inline(always)]
    pub(super) fn str(&mut self, s: &str) {
        if s.len() <= FIXSTR_MAX {
            self.0.tag_bytes(FIXSTR + s.len() as u8, s.as_bytes());
        } else {
            self.0.byte(STR);
            self.uint(s.len() as u64);
            self.0.write(s.as_bytes());
        }
    }
}

impl<'a, S: Sink> ser::Serializer for Encoder<'a, S> {
    type Ok = ();
    type Error = HashError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = MapEncoder<'a, S>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(mut self, v: bool) -> Result<(), HashError> {
        self.tag(if v { TRUE } else { FALSE });
        Ok(())
    }
    // All integers by value, so a JSON number read as i64 or u64 hashes the same.
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
        self.int(v);
        Ok(())
    }
    fn serialize_i128(mut self, v: i128) -> Result<(), HashError> {
        self.int128(v);
        Ok(())
    }
    fn serialize_u8(mut self, v: u8) -> Result<(), HashError> {
        self.uint(v.into());
        Ok(())
    }
    fn serialize_u16(mut self, v: u16) -> Result<(), HashError> {
        self.uint(v.into());
        Ok(())
    }
    fn serialize_u32(mut self, v: u32) -> Result<(), HashError> {
        self.uint(v.into());
        Ok(())
    }
    fn serialize_u64(mut self, v: u64) -> Result<(), HashError> {
        self.uint(v);
        Ok(())
    }
    fn serialize_u128(mut self, v: u128) -> Result<(), HashError> {
        self.uint128(v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), HashError> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), HashError> {
        // -0.0 equals 0.0 and every NaN is one NaN, as far as "the same request" goes.
        let v = if v == 0.0 {
            0.0
        } else if v.is_nan() {
            f64::NAN
        } else {
            v
        };
        self.0.tag_word(FLOAT, v.to_bits(), 8);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), HashError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(mut self, v: &str) -> Result<(), HashError> {
        self.str(v);
        Ok(())
    }
    fn serialize_bytes(mut self, v: &[u8]) -> Result<(), HashError> {
        self.tag(BYTES);
        self.uint(v.len() as u64);
        self.0.write(v);
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
        self.tag(VARIANT);
        self.str(variant);
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
        self.tag(VARIANT);
        self.str(variant);
        value.serialize(self)
    }
    // A sequence ends with END rather than starting with its length: serde does not always
    // know the length up front, and a `Vec` and an iterator of the same items must agree.
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
        self.tag(VARIANT);
        self.str(variant);
        self.tag(SEQ);
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapEncoder<'a, S>, HashError> {
        Ok(MapEncoder::new(self.0, len))
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
        self.tag(VARIANT);
        self.str(variant);
        self.tag(STRUCT);
        Ok(self)
    }
}

macro_rules! seq_like {
    ($($trait:ident :: $method:ident),*) => {$(
        impl<S: Sink> ser::$trait for Encoder<'_, S> {
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
        impl<S: Sink> ser::$trait for Encoder<'_, S> {
            type Ok = ();
            type Error = HashError;
            // Field names are hashed: with `skip_serializing_if`, {a: 1} and {b: 1} differ.
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), HashError> {
                self.str(key);
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
