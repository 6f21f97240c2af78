//! Request fingerprints: a canonical, streaming SHA-256 over the hashed arguments.
//!
//! # The encoding (v2)
//!
//! The serializer below turns serde's data model into a compact, self-delimiting byte
//! encoding in the spirit of CBOR and MessagePack, and streams it into SHA-256 after the
//! domain prefix `idem/fp/v2\0`. Every value starts with one tag byte:
//!
//! | tag | value |
//! |---|---|
//! | `00..=7F` | the integer 0..=127: the tag is the value |
//! | `80..=8F` | an integer ≥ 128: its `n = tag - 0x7F` low bytes follow, little-endian, `n` minimal |
//! | `90..=9F` | an integer < -32: the `n = tag - 0x8F` low bytes of `-1 - value` follow, likewise |
//! | `A0..=BF` | a string of `tag - 0xA0` (0..=31) bytes, which follow |
//! | `C0` | unit (`()`, unit structs) |
//! | `C1`, `C2` | false, true |
//! | `C3`, `C4` | `None`; `Some`, followed by its value |
//! | `C5` | a float: the 8 bytes of the `f64`, little-endian (-0.0 is 0.0, every NaN one NaN) |
//! | `C6`, `C7` | a string of 32 bytes or more, a byte string: the length (as an integer), the bytes |
//! | `C8` | a sequence or tuple: the elements, then `CC` |
//! | `C9` | a struct: its fields (name as a string, value), then `CC` |
//! | `CA` | a map: the entry count (as an integer), then the entries (key, value) in canonical order |
//! | `CB` | an enum variant: its name as a string, then `C0`, its value, a `C8` or a `C9` |
//! | `CC` | the end of a sequence or struct |
//! | `E0..=FF` | the integer -32..=-1: the tag is the value as an `i8` |
//!
//! What that buys:
//!
//! - **Injective.** Every encoding determines where it ends (fixed size, a length, a count,
//!   or `CC`, which starts no value), so a value is never a prefix of another and a sequence of
//!   values decodes one way: `("ab", "c")` ≠ `("a", "bc")`, `None` ≠ `Some(())` ≠ `()`,
//!   `Some(0)` ≠ `0`.
//! - **Integers by value.** Every serde integer type writes its mathematical value, in the one
//!   shortest form (sign and magnitude as in CBOR, so `u128` above `i128::MAX` needs no special
//!   case): `5u8`, `5i64` and a JSON `5` hash the same. Floats have their own tag: `5` ≠ `5.0`.
//! - **Canonical maps.** Each entry is encoded into a scratch buffer, the entries are sorted
//!   by a 32-bit hash of their bytes (`sort_hash`), then by their bytes where hashes tie,
//!   and written out in that order: a `HashMap`, a `BTreeMap` or a JSON object with its fields
//!   in another order hash the same. (No length per entry is needed: entries are
//!   self-delimiting too.) Maps are the only values that allocate; structs, sequences and
//!   scalars stream.
//! - **Names.** Struct field names and variant names are hashed (with `skip_serializing_if`,
//!   `{a: 1}` and `{b: 1}` differ); type names are not, so renaming a type keeps its
//!   fingerprints.
//!
//! Why this shape: the cost of hashing through serde is per value, not per byte. Small
//! integers and short strings (field names) take one tag byte, so values take about as many
//! bytes as in bincode (field names aside, which bincode leaves out; the amounts in
//! `benches/fingerprint.rs` take 4 bytes here, 5 in bincode), and every write is a copy into a 128-byte buffer that SHA-256 only sees as whole blocks:
//! a `Sha256::update` per tag costs more than the copy.
//!
//! Everything here — tags, integer forms, the domain prefix, the map order and its hash —
//! is part of every fingerprint stored. Changing any of it changes fingerprints, so records
//! stored before the change fail their payload check on replay (`Error::PayloadMismatch`);
//! such a change takes a new domain prefix, and a note in the changelog.
//!
//! # Why SHA-256
//!
//! Measured on the CPU we run on (AMD EPYC, Zen 4 class, with SHA instructions;
//! `benches/fingerprint.rs`, BENCHMARKS.md): BLAKE3 is 1.27× faster at 64 B, SHA-256 1.74×
//! faster at 1 KiB, BLAKE3 2.73× faster at 64 KiB. Requests are typically at most a few KiB,
//! where SHA-256 is the faster or close; BLAKE3 would only pay off for large payloads.

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
        // What a builder with one argument does, without moving the builder into `finish`.
        let mut sink = HashSink::new();
        match value.serialize(Encoder(&mut sink)) {
            Ok(()) => Ok(Fingerprint(sink.finish())),
            Err(e) => Err(arg_error(e)),
        }
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
    sink: HashSink,
    error: Option<HashError>,
}

impl Default for FingerprintBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FingerprintBuilder {
    /// An empty builder.
    // `#[inline]` (also `finish`): the builder is ~300 bytes, and inlined it is not moved.
    #[inline]
    pub fn new() -> Self {
        FingerprintBuilder {
            sink: HashSink::new(),
            error: None,
        }
    }

    /// Hashes one more argument.
    pub fn arg<T: Serialize + ?Sized>(&mut self, value: &T) {
        // Arguments are self-delimiting, so their concatenation needs no separator.
        if self.error.is_none()
            && let Err(e) = value.serialize(Encoder(&mut self.sink))
        {
            self.error = Some(e);
        }
    }

    /// The fingerprint, or the error of an argument whose `Serialize` failed.
    #[inline]
    pub fn finish(mut self) -> Result<Fingerprint, CodecError> {
        match self.error.take() {
            Some(e) => Err(arg_error(e)),
            None => Ok(Fingerprint(self.sink.finish())),
        }
    }
}

fn arg_error(e: HashError) -> CodecError {
    CodecError::new("fingerprint", "hash an argument", e.0)
}

/// Hashed before the arguments: names the encoding, which a new version must change.
const DOMAIN: &[u8] = b"idem/fp/v2\0";

// Tags (see the table in the module docs).
/// The largest integer that is its own tag.
const FIXINT_MAX: u64 = 0x7F;
/// An integer ≥ 128 whose magnitude takes one byte; `+ n - 1` for `n` bytes.
const POS_1: u8 = 0x80;
/// An integer < -32 whose `-1 - value` takes one byte; `+ n - 1` for `n` bytes.
const NEG_1: u8 = 0x90;
/// A string of 0 bytes; `+ len` for `len` ≤ [`FIXSTR_MAX`].
const FIXSTR: u8 = 0xA0;
const FIXSTR_MAX: usize = 31;
const UNIT: u8 = 0xC0;
const FALSE: u8 = 0xC1;
const TRUE: u8 = 0xC2;
const NONE: u8 = 0xC3;
const SOME: u8 = 0xC4;
const FLOAT: u8 = 0xC5;
const STR: u8 = 0xC6;
const BYTES: u8 = 0xC7;
const SEQ: u8 = 0xC8;
const STRUCT: u8 = 0xC9;
const MAP: u8 = 0xCA;
const VARIANT: u8 = 0xCB;
const END: u8 = 0xCC;
/// The negative integers -32..=-1 are their own tag (as an `i8`): `-1 - value` ≤ this.
const NEG_FIXINT_MAX: u64 = 31;

/// Where the encoding goes: the hasher, or a map's scratch buffer (one encoding for both).
///
/// Most values are a tag and a few bytes (an integer, a field name). The sinks write them
/// with fixed-size copies and one update of their length, rather than a call to `memcpy`
/// and a length update per piece: at this size, those cost more than the bytes.
trait Sink {
    fn byte(&mut self, byte: u8);
    fn write(&mut self, bytes: &[u8]);
    /// Writes `tag`, then the `len` (≤ 8) low bytes of `word`, little-endian.
    fn tag_word(&mut self, tag: u8, word: u64, len: usize);
    /// Writes `tag`, then `bytes`.
    fn tag_bytes(&mut self, tag: u8, bytes: &[u8]);
}

/// Copies a short slice (≤ 16 bytes) as two overlapping fixed-size copies, as `memcpy`
/// itself does, but inline. (Integer loads and stores: with `copy_from_slice`, LLVM merges
/// the 8- and 4-byte branches back into a `memcpy` call of variable length.)
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    debug_assert!(n <= 16 && dst.len() == n);
    if n >= 8 {
        let (a, b) = (word::<8>(&src[..8]), word::<8>(&src[n - 8..]));
        *word_mut::<8>(&mut dst[..8]) = a;
        *word_mut::<8>(&mut dst[n - 8..]) = b;
    } else if n >= 4 {
        let (a, b) = (word::<4>(&src[..4]), word::<4>(&src[n - 4..]));
        *word_mut::<4>(&mut dst[..4]) = a;
        *word_mut::<4>(&mut dst[n - 4..]) = b;
    } else if n > 0 {
        dst[0] = src[0];
        dst[n / 2] = src[n / 2];
        dst[n - 1] = src[n - 1];
    }
}

#[inline(always)]
fn word<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().unwrap()
}

#[inline(always)]
fn word_mut<const N: usize>(bytes: &mut [u8]) -> &mut [u8; N] {
    bytes.try_into().unwrap()
}

/// The size of the buffer in front of SHA-256: a multiple of its 64-byte block.
const BUF: usize = 128;

/// SHA-256 behind a small buffer. Each `Sha256::update` costs a few ns of bookkeeping, more
/// than most writes here, so writes are copies into `buf` and the hasher gets whole blocks
/// only: a full buffer, or the whole blocks of a long string, passed without a copy.
struct HashSink {
    hasher: Sha256,
    buf: [u8; BUF],
    len: usize,
}

impl HashSink {
    /// A sink that has taken [`DOMAIN`].
    #[inline]
    fn new() -> HashSink {
        // A constant buffer that starts with the prefix: building it at run time copies it.
        const START: [u8; BUF] = {
            let mut buf = [0; BUF];
            let mut i = 0;
            while i < DOMAIN.len() {
                buf[i] = DOMAIN[i];
                i += 1;
            }
            buf
        };
        HashSink {
            hasher: Sha256::new(),
            buf: START,
            len: DOMAIN.len(),
        }
    }

    /// The digest. (Through `&mut self`: taking `self` copies the ~250-byte sink.)
    #[inline]
    fn finish(&mut self) -> [u8; 32] {
        self.hasher.update(&self.buf[..self.len]);
        self.hasher.finalize_reset().into()
    }

    /// Any write: the fast paths below only handle short ones that fit.
    #[cold]
    #[inline(never)]
    fn write_slow(&mut self, bytes: &[u8]) {
        if bytes.len() <= BUF - self.len {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        let (head, rest) = bytes.split_at(BUF - self.len);
        self.buf[self.len..].copy_from_slice(head);
        // A slice: `update(self.buf)` would copy the array to pass it by value.
        self.hasher.update(&self.buf[..]);
        let (blocks, tail) = rest.split_at(rest.len() - rest.len() % 64);
        if !blocks.is_empty() {
            self.hasher.update(blocks);
        }
        self.buf[..tail.len()].copy_from_slice(tail);
        self.len = tail.len();
    }

    #[cold]
    #[inline(never)]
    fn tag_bytes_slow(&mut self, tag: u8, bytes: &[u8]) {
        self.write_slow(&[tag]);
        self.write_slow(bytes);
    }
}

impl Sink for HashSink {
    #[inline(always)]
    fn byte(&mut self, byte: u8) {
        if self.len < BUF {
            self.buf[self.len] = byte;
            self.len += 1;
        } else {
            self.write_slow(&[byte]);
        }
    }

    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        let (at, n) = (self.len, bytes.len());
        // `at + 16` rather than `at + n`: a constant bound lets the compiler drop the checks.
        if n <= 16 && at + 16 <= BUF {
            copy_short(&mut self.buf[at..at + n], bytes);
            self.len = at + n;
        } else {
            self.write_slow(bytes);
        }
    }

    #[inline(always)]
    fn tag_word(&mut self, tag: u8, word: u64, len: usize) {
        let at = self.len;
        if at + 9 <= BUF {
            // All 8 bytes (one store); the ones past `len` are overwritten by what follows.
            self.buf[at] = tag;
            self.buf[at + 1..at + 9].copy_from_slice(&word.to_le_bytes());
            self.len = at + 1 + len;
        } else {
            self.tag_bytes_slow(tag, &word.to_le_bytes()[..len]);
        }
    }

    #[inline(always)]
    fn tag_bytes(&mut self, tag: u8, bytes: &[u8]) {
        let (at, n) = (self.len, bytes.len());
        if n <= 16 && at + 17 <= BUF {
            self.buf[at] = tag;
            copy_short(&mut self.buf[at + 1..at + 1 + n], bytes);
            self.len = at + 1 + n;
        } else {
            self.tag_bytes_slow(tag, bytes);
        }
    }
}

impl Sink for Vec<u8> {
    #[inline(always)]
    fn byte(&mut self, byte: u8) {
        self.push(byte);
    }

    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        let (at, n) = (self.len(), bytes.len());
        if n <= 16 {
            // A fixed-size (zeroed) extension, then the copy into it.
            self.extend_from_slice(&[0; 16]);
            copy_short(&mut self[at..at + n], bytes);
            self.truncate(at + n);
        } else {
            self.extend_from_slice(bytes);
        }
    }

    #[inline(always)]
    fn tag_word(&mut self, tag: u8, word: u64, len: usize) {
        self.push(tag);
        self.extend_from_slice(&word.to_le_bytes());
        self.truncate(self.len() - (8 - len));
    }

    #[inline(always)]
    fn tag_bytes(&mut self, tag: u8, bytes: &[u8]) {
        self.push(tag);
        Sink::write(self, bytes);
    }
}

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

/// The serde serializer: writes one value's encoding into a [`Sink`].
struct Encoder<'a, S>(&'a mut S);

impl<S: Sink> Encoder<'_, S> {
    fn reborrow(&mut self) -> Encoder<'_, S> {
        Encoder(self.0)
    }

    #[inline(always)]
    fn tag(&mut self, tag: u8) {
        self.0.byte(tag);
    }

    /// A non-negative integer (also lengths and counts).
    #[inline(always)]
    fn uint(&mut self, v: u64) {
        if v <= FIXINT_MAX {
            self.0.byte(v as u8);
        } else {
            self.wide(POS_1, v);
        }
    }

    /// A negative integer, given as `m = -1 - value` (that is `!value`, never negative).
    #[inline(always)]
    fn neg(&mut self, m: u64) {
        if m <= NEG_FIXINT_MAX {
            // -1 - m as an i8: 0xFF for -1 down to 0xE0 for -32.
            self.0.byte(!(m as u8));
        } else {
            self.wide(NEG_1, m);
        }
    }

    #[inline(always)]
    fn int(&mut self, v: i64) {
        if v >= 0 {
            self.uint(v as u64);
        } else {
            self.neg(!v as u64);
        }
    }

    /// A tag saying how many bytes `v` takes (at least one), then those bytes.
    #[inline(always)]
    fn wide(&mut self, tag_1: u8, v: u64) {
        let n = 8 - (v.leading_zeros() / 8) as usize;
        self.0.tag_word(tag_1 + (n - 1) as u8, v, n);
    }

    // 128-bit integers that fit 64 bits take the 64-bit path, so each value has one encoding.
    fn uint128(&mut self, v: u128) {
        match u64::try_from(v) {
            Ok(v) => self.uint(v),
            Err(_) => self.wide128(POS_1, v),
        }
    }

    fn int128(&mut self, v: i128) {
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
    fn wide128(&mut self, tag_1: u8, v: u128) {
        let n = 16 - (v.leading_zeros() / 8) as usize;
        self.0.byte(tag_1 + (n - 1) as u8);
        self.0.write(&v.to_le_bytes()[..n]);
    }

    #[inline(always)]
    fn str(&mut self, s: &str) {
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
        // A guess at the size (24 bytes an entry, padding included), capped: `len` comes from
        // the value.
        let len = len.unwrap_or(0).min(4096);
        Ok(MapEncoder {
            parent: self.0,
            buf: Vec::with_capacity(len * 24),
            starts: Vec::with_capacity(len),
            has_key: false,
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

/// Encodes a map's entries into a buffer of its own, then writes them sorted into the
/// parent: the same entries in any order give the same bytes. A map inside an entry (at any
/// depth) does the same into its own buffer, then appends its sorted form to this one.
struct MapEncoder<'a, S> {
    parent: &'a mut S,
    /// The entries' encodings (key, then value), back to back.
    buf: Vec<u8>,
    /// Where each entry starts in `buf`; it ends where the next one starts.
    starts: Vec<usize>,
    /// Whether a key has been written whose value is awaited.
    has_key: bool,
}

impl<S: Sink> ser::SerializeMap for MapEncoder<'_, S> {
    type Ok = ();
    type Error = HashError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), HashError> {
        if self.has_key {
            return Err(HashError("map key serialized twice without a value".into()));
        }
        self.has_key = true;
        self.starts.push(self.buf.len());
        key.serialize(Encoder(&mut self.buf))
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), HashError> {
        if !self.has_key {
            return Err(HashError("map value serialized before its key".into()));
        }
        self.has_key = false;
        value.serialize(Encoder(&mut self.buf))
    }

    fn end(self) -> Result<(), HashError> {
        if self.has_key {
            return Err(HashError("map key serialized without a value".into()));
        }
        let MapEncoder {
            parent,
            buf,
            starts,
            ..
        } = self;
        let entry = |i: u64| {
            let i = i as u32 as usize;
            &buf[starts[i]..starts.get(i + 1).copied().unwrap_or(buf.len())]
        };
        let count = u32::try_from(starts.len())
            .map_err(|_| HashError("map of more than 2^32 entries".into()))?;
        // The order: any that depends on the entries' bytes alone is canonical. This one is by
        // a 32-bit hash of each entry, then by its bytes where hashes tie: sorting plain
        // integers (hash above, index below) is branch-free and several times faster than
        // comparing byte strings. Entries are prefix-free, so two compare equal only if they
        // are the same bytes, and then their order does not matter.
        let mut order: Vec<u64> = (0..u64::from(count))
            .map(|i| sort_hash(entry(i)) << 32 | i)
            .collect();
        order.sort_unstable();
        for tie in order.chunk_by_mut(|a, b| a >> 32 == b >> 32) {
            if tie.len() > 1 {
                tie.sort_unstable_by(|&a, &b| entry(a).cmp(entry(b)));
            }
        }
        let mut out = Encoder(parent);
        out.tag(MAP);
        out.uint(count.into());
        for &i in &order {
            out.0.write(entry(i));
        }
        Ok(())
    }
}

/// A 32-bit hash of a map entry, from its first 16 and last 8 bytes (entries that differ
/// only elsewhere tie, and are then compared in full). Part of the encoding: changing it
/// reorders map entries, so it changes fingerprints.
#[inline]
fn sort_hash(entry: &[u8]) -> u64 {
    let (head, tail) = match entry.first_chunk::<16>() {
        Some(head) => (*head, entry.last_chunk::<8>().copied().unwrap_or_default()),
        None => {
            let mut head = [0; 16];
            copy_short(&mut head[..entry.len()], entry);
            (head, [0; 8])
        }
    };
    let [a, b] = [&head[..8], &head[8..]].map(|w| u64::from_le_bytes(w.try_into().unwrap()));
    let c = u64::from_le_bytes(tail);
    // Multiplications carry every input bit into the top half, which is what is kept.
    let x = (a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b).wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ c;
    x.wrapping_mul(0xA076_1D64_78BD_642F) >> 32
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::{BTreeMap, HashMap, HashSet};

    fn fp<T: Serialize + ?Sized>(v: &T) -> Fingerprint {
        Fingerprint::of(v).unwrap()
    }

    /// The encoding of one value, as the hasher would see it after the domain prefix.
    fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        v.serialize(Encoder(&mut out)).unwrap();
        out
    }

    /// A byte string (`serialize_bytes`), without a serde_bytes dependency.
    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn strings_are_delimited() {
        assert_ne!(fp(&("ab", "c")), fp(&("a", "bc")));
        assert_ne!(fp(&vec!["a", "b"]), fp(&vec!["ab"]));
        assert_ne!(
            fp(&(vec![1u8], vec![2u8])),
            fp(&(vec![1u8, 2], Vec::<u8>::new()))
        );
        let mut a = FingerprintBuilder::new();
        a.arg("ab");
        a.arg("c");
        let mut b = FingerprintBuilder::new();
        b.arg("a");
        b.arg("bc");
        assert_ne!(a.finish().unwrap(), b.finish().unwrap());
    }

    #[test]
    fn strings_around_the_short_form() {
        let s31 = "x".repeat(31);
        let s32 = "x".repeat(32);
        assert_eq!(enc(""), [0xA0]);
        assert_eq!(enc(&s31)[0], 0xBF);
        assert_eq!(enc(&s31).len(), 32);
        assert_eq!(enc(&s32)[..2], [STR, 32]);
        assert_eq!(enc(&s32).len(), 34);
        assert_eq!(enc(&"y".repeat(300))[..4], [STR, 0x81, 44, 1]);
        // Text, byte strings and characters.
        assert_ne!(fp("ab"), fp(&Bytes(b"ab")));
        assert_ne!(fp(""), fp(&Bytes(b"")));
        assert_eq!(fp(&'é'), fp("é"));
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
        let x = json(r#"{"a":1,"b":{"c":[1,2],"d":null}}"#);
        let y = json(r#"{"b":{"d":null,"c":[1,2]},"a":1}"#);
        assert_eq!(fp(&x), fp(&y));
        let z = json(r#"{"b":{"d":null,"c":[2,1]},"a":1}"#);
        assert_ne!(fp(&x), fp(&z));
    }

    #[test]
    fn maps_with_long_common_prefixes_ignore_order() {
        // Entries that agree on their first 16 bytes are compared in full.
        let key = |i: u32| format!("a-rather-long-common-prefix/{}", i * 7919 % 1000);
        let a: HashMap<String, u32> = (0..200).map(|i| (key(i), i)).collect();
        let mut b = HashMap::with_capacity(1000);
        b.extend((0..200).rev().map(|i| (key(i), i)));
        let sorted: BTreeMap<_, _> = a.clone().into_iter().collect();
        assert_eq!(fp(&a), fp(&b));
        assert_eq!(fp(&a), fp(&sorted));
        b.insert(key(3), 4);
        assert_ne!(fp(&a), fp(&b));
    }

    #[test]
    fn maps_whose_entries_tie_on_the_sort_hash_ignore_order() {
        // The same first 16 and last 8 bytes: every entry has the same sort hash, so the order
        // comes from comparing the entries in full.
        let key = |i: u32| {
            format!(
                "same-first-16-bytes/{:04}/same-last-8-bytes",
                i * 7919 % 1000
            )
        };
        let entry = |i| [enc(&key(i)), enc(&1u8)].concat();
        assert_eq!(sort_hash(&entry(0)), sort_hash(&entry(1)));
        let a: HashMap<String, u8> = (0..100).map(|i| (key(i), 1)).collect();
        let mut b = HashMap::with_capacity(1000);
        b.extend((0..100).rev().map(|i| (key(i), 1)));
        let sorted: BTreeMap<_, _> = a.clone().into_iter().collect();
        assert_eq!(fp(&a), fp(&b));
        assert_eq!(enc(&a), enc(&sorted));
        // Keys of one length: byte order is their order as strings, the BTreeMap's.
        let mut expected = vec![MAP, 100];
        for k in sorted.keys() {
            expected.extend([enc(k), enc(&1u8)].concat());
        }
        assert_eq!(enc(&sorted), expected);
        b.insert(key(5), 2);
        assert_ne!(fp(&a), fp(&b));
    }

    #[test]
    fn nested_maps_ignore_order() {
        let inner = |rev: bool| {
            let mut m = HashMap::with_capacity(if rev { 100 } else { 3 });
            let mut items: Vec<(String, i32)> = (0..20).map(|i| (format!("i{i}"), -i)).collect();
            if rev {
                items.reverse();
            }
            m.extend(items);
            m
        };
        let mut a: HashMap<u8, HashMap<String, i32>> = HashMap::new();
        let mut b: HashMap<u8, HashMap<String, i32>> = HashMap::with_capacity(50);
        for k in 0..10 {
            a.insert(k, inner(false));
        }
        for k in (0..10).rev() {
            b.insert(k, inner(true));
        }
        let c: BTreeMap<u64, BTreeMap<String, i64>> = a
            .iter()
            .map(|(k, m)| {
                let m = m.iter().map(|(k, v)| (k.clone(), i64::from(*v))).collect();
                (u64::from(*k), m)
            })
            .collect();
        assert_eq!(fp(&a), fp(&b));
        assert_eq!(fp(&a), fp(&c));
        b.get_mut(&7).unwrap().insert("i3".into(), 3);
        assert_ne!(fp(&a), fp(&b));
        // A map as a key.
        let ka: BTreeMap<BTreeMap<u8, u8>, u8> = [([(1, 2), (3, 4)].into(), 5)].into();
        let kb: HashMap<Vec<(u8, u8)>, u8> = [(vec![(1, 2), (3, 4)], 5)].into();
        assert_ne!(fp(&ka), fp(&kb));
    }

    #[test]
    fn maps_in_seqs_in_maps_ignore_order() {
        let x = json(r#"{"a":[{"x":1,"y":{"p":[],"q":{}}},{"z":[{"m":1,"n":2}]}],"b":{}}"#);
        let y = json(r#"{"b":{},"a":[{"y":{"q":{},"p":[]},"x":1},{"z":[{"n":2,"m":1}]}]}"#);
        assert_eq!(fp(&x), fp(&y));
        // The order of a sequence still counts.
        let z = json(r#"{"b":{},"a":[{"z":[{"n":2,"m":1}]},{"y":{"q":{},"p":[]},"x":1}]}"#);
        assert_ne!(fp(&x), fp(&z));
        // An empty map and an empty sequence differ, even deep down.
        let w = json(r#"{"b":{},"a":[{"y":{"q":[],"p":[]},"x":1},{"z":[{"n":2,"m":1}]}]}"#);
        assert_ne!(fp(&x), fp(&w));
    }

    #[test]
    fn map_keys_and_values_are_bound() {
        let a: BTreeMap<&str, &str> = [("a", "b"), ("c", "d")].into();
        let b: BTreeMap<&str, &str> = [("a", "d"), ("c", "b")].into();
        assert_ne!(fp(&a), fp(&b));
        let c: BTreeMap<&str, &str> = [("ab", ""), ("c", "d")].into();
        let d: BTreeMap<&str, &str> = [("a", "b"), ("c", "d")].into();
        assert_ne!(fp(&c), fp(&d));
        // Entries are not flattened into a sequence.
        assert_ne!(fp(&a), fp(&vec!["a", "b", "c", "d"]));
        assert_ne!(fp(&a), fp(&vec![("a", "b"), ("c", "d")]));
    }

    #[test]
    fn empty_values_differ() {
        #[derive(Serialize)]
        struct Empty {}
        #[derive(Serialize)]
        struct Unit;
        let all = [
            fp(&()),
            fp(&BTreeMap::<u8, u8>::new()),
            fp(&Vec::<u8>::new()),
            fp(&Empty {}),
            fp(&None::<u8>),
            fp(""),
            fp(&Bytes(b"")),
            fp(&0u8),
            fp(&false),
        ];
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
        assert_eq!(fp(&()), fp(&Unit));
        assert_eq!(enc(&BTreeMap::<u8, u8>::new()), [MAP, 0]);
        assert_eq!(enc(&Vec::<u8>::new()), [SEQ, END]);
        assert_eq!(enc(&()), [UNIT]);
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
    fn type_names_are_not_hashed_but_variant_names_are() {
        mod old {
            #[derive(serde::Serialize)]
            pub(super) struct Order {
                pub(super) id: u32,
                pub(super) kind: Kind,
            }
            #[derive(serde::Serialize)]
            pub(super) enum Kind {
                Card(u8),
                Wire { iban: &'static str },
                Cash,
            }
        }
        mod new {
            #[derive(serde::Serialize)]
            pub(super) struct Purchase {
                pub(super) id: u32,
                pub(super) kind: Method,
            }
            #[derive(serde::Serialize)]
            pub(super) enum Method {
                Card(u8),
                Transfer { iban: &'static str },
                Cash,
            }
        }
        let o = |kind| old::Order { id: 7, kind };
        let n = |kind| new::Purchase { id: 7, kind };
        assert_eq!(fp(&o(old::Kind::Card(1))), fp(&n(new::Method::Card(1))));
        assert_eq!(fp(&o(old::Kind::Cash)), fp(&n(new::Method::Cash)));
        assert_ne!(
            fp(&o(old::Kind::Wire { iban: "x" })),
            fp(&n(new::Method::Transfer { iban: "x" }))
        );
        assert_ne!(fp(&old::Kind::Card(0)), fp(&old::Kind::Cash));
        assert_ne!(fp(&old::Kind::Card(0)), fp(&0u8));
    }

    /// The length of the value encoded at the start of `b`, read by the table in the module
    /// docs alone.
    fn skip(b: &[u8]) -> usize {
        // A length or a count.
        let uint = |b: &[u8]| match b[0] {
            t @ 0..=0x7F => (usize::from(t), 1),
            t @ 0x80..=0x87 => {
                let n = usize::from(t - 0x7F);
                let mut word = [0; 8];
                word[..n].copy_from_slice(&b[1..=n]);
                (u64::from_le_bytes(word) as usize, 1 + n)
            }
            t => panic!("not a length: {t:#x}"),
        };
        match b[0] {
            0x00..=0x7F | 0xE0..=0xFF | UNIT | FALSE | TRUE | NONE => 1,
            t @ 0x80..=0x8F => 1 + usize::from(t - 0x7F),
            t @ 0x90..=0x9F => 1 + usize::from(t - 0x8F),
            t @ 0xA0..=0xBF => 1 + usize::from(t - 0xA0),
            SOME => 1 + skip(&b[1..]),
            FLOAT => 9,
            STR | BYTES => {
                let (len, n) = uint(&b[1..]);
                1 + n + len
            }
            SEQ => {
                let mut i = 1;
                while b[i] != END {
                    i += skip(&b[i..]);
                }
                i + 1
            }
            STRUCT => {
                let mut i = 1;
                while b[i] != END {
                    assert!(matches!(b[i], 0xA0..=0xBF | STR), "a field name");
                    i += skip(&b[i..]);
                    i += skip(&b[i..]);
                }
                i + 1
            }
            MAP => {
                let (count, n) = uint(&b[1..]);
                let mut i = 1 + n;
                for _ in 0..2 * count {
                    i += skip(&b[i..]);
                }
                i
            }
            VARIANT => {
                let name = 1 + skip(&b[1..]);
                name + skip(&b[name..])
            }
            t => panic!("not a tag: {t:#x}"),
        }
    }

    #[test]
    fn encodings_are_self_delimiting() {
        #[derive(Serialize)]
        enum E {
            A,
            B(u8),
            C(i64, String),
            D { x: Option<f32>, y: Vec<()> },
        }
        #[derive(Serialize)]
        struct S {
            e: Vec<E>,
            m: HashMap<String, BTreeMap<i128, Option<bool>>>,
            b: Vec<u8>,
            c: char,
            u: u128,
        }
        let s = S {
            e: vec![
                E::A,
                E::B(200),
                E::C(-1_000_000, "x".repeat(200)),
                E::D {
                    x: Some(-0.5),
                    y: vec![(); 3],
                },
                E::D { x: None, y: vec![] },
            ],
            m: [
                ("k".repeat(40), [(-1, None), (i128::MIN, Some(true))].into()),
                (String::new(), BTreeMap::new()),
            ]
            .into(),
            b: vec![0, 255, 128],
            c: 'ß',
            u: u128::MAX,
        };
        let values = [
            enc(&s),
            enc(&json(
                r#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":"long string over 32 bytes ....."}"#,
            )),
            enc(&Bytes(&[7; 300])),
            enc(&(
                u64::MAX,
                i64::MIN,
                -33i8,
                128u8,
                "y".repeat(31),
                "z".repeat(32),
            )),
            enc(&()),
            enc(&Some(Some(()))),
        ];
        for v in &values {
            assert_eq!(skip(v), v.len(), "{v:x?}");
            for w in &values {
                assert_eq!(skip(&[v.as_slice(), w].concat()), v.len());
            }
        }
    }

    #[test]
    fn small_integers_are_one_byte() {
        assert_eq!(enc(&0u8), [0]);
        assert_eq!(enc(&63u8), [63]);
        assert_eq!(enc(&64i32), [64]);
        assert_eq!(enc(&127u64), [0x7F]);
        assert_eq!(enc(&128u8), [0x80, 128]);
        assert_eq!(enc(&255u8), [0x80, 255]);
        assert_eq!(enc(&256u16), [0x81, 0, 1]);
        assert_eq!(enc(&-1i8), [0xFF]);
        assert_eq!(enc(&-2i64), [0xFE]);
        assert_eq!(enc(&-32i8), [0xE0]);
        assert_eq!(enc(&-33i8), [0x90, 32]);
        assert_eq!(enc(&-128i8), [0x90, 127]);
        assert_eq!(enc(&-256i16), [0x90, 255]);
        assert_eq!(enc(&-257i16), [0x91, 0, 1]);
    }

    #[test]
    fn large_integers_take_their_shortest_form() {
        let ff = |n| vec![0xFF; n];
        assert_eq!(enc(&u64::MAX), [vec![0x87], ff(8)].concat());
        assert_eq!(enc(&i64::MAX), [vec![0x87], ff(7), vec![0x7F]].concat());
        // -1 - i64::MIN = i64::MAX
        assert_eq!(enc(&i64::MIN), [vec![0x97], ff(7), vec![0x7F]].concat());
        assert_eq!(
            enc(&(u128::from(u64::MAX) + 1)),
            [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(enc(&u128::MAX), [vec![0x8F], ff(16)].concat());
        assert_eq!(enc(&i128::MIN), [vec![0x9F], ff(15), vec![0x7F]].concat());
        assert_eq!(enc(&-1i128), [0xFF]);
        assert_eq!(
            enc(&(i128::from(i64::MIN) - 1)),
            [0x97, 0, 0, 0, 0, 0, 0, 0, 0x80]
        );
    }

    #[test]
    fn integers_hash_by_value() {
        assert_eq!(fp(&5u8), fp(&5i64));
        assert_ne!(fp(&5u8), fp(&6u8));
        assert_ne!(fp(&5u8), fp(&5.0f64));
        assert_eq!(fp(&0.0f64), fp(&-0.0f64));
        assert_eq!(fp(&f64::NAN), fp(&-f64::NAN));
        assert_ne!(fp(&u128::MAX), fp(&-1i128));
        for v in [0i64, 5, 63, 64, 127, -1, -32, -33, -128] {
            let all = [
                fp(&v),
                fp(&i128::from(v)),
                fp(&(v as i8)),
                fp(&(v as i16)),
                fp(&(v as i32)),
                fp(&json(&v.to_string())),
            ];
            assert!(all.iter().all(|f| *f == all[0]), "{v}");
            assert_ne!(fp(&v), fp(&(v as f64)), "{v}");
        }
        for v in [0u64, 127, 128, 255, 256, 65_535, 65_536, u64::MAX] {
            assert_eq!(fp(&v), fp(&u128::from(v)), "{v}");
            assert_eq!(fp(&v), fp(&i128::from(v)), "{v}");
            assert_eq!(fp(&v), fp(&json(&v.to_string())), "{v}");
            if let Ok(w) = i64::try_from(v) {
                assert_eq!(fp(&v), fp(&w), "{v}");
            }
        }
        assert_eq!(fp(&i64::MIN), fp(&i128::from(i64::MIN)));
        assert_eq!(fp(&i64::MIN), fp(&json(&i64::MIN.to_string())));
        assert_eq!(fp(&u128::MAX), fp(&u128::MAX));
        assert_eq!(fp(&(i128::MAX as u128)), fp(&i128::MAX));
    }

    #[test]
    fn distinct_integers_hash_apart() {
        let mut values: Vec<i128> = vec![i128::MIN, i128::MAX, -(1 << 64), 1 << 64];
        for bits in 0..64 {
            let p = 1i128 << bits;
            values.extend([p - 1, p, p + 1, -p - 1, -p, -p + 1]);
        }
        values.extend(-300..300);
        values.sort_unstable();
        values.dedup();
        let mut seen: HashSet<Fingerprint> = values.iter().map(fp).collect();
        seen.insert(fp(&u128::MAX));
        seen.insert(fp(&(i128::MAX as u128 + 1)));
        assert_eq!(seen.len(), values.len() + 2);
    }

    #[test]
    fn options_and_units_differ() {
        assert_ne!(fp(&None::<u8>), fp(&Some(())));
        assert_ne!(fp(&()), fp(&None::<u8>));
        assert_ne!(fp(&()), fp(&Some(())));
        assert_ne!(fp(&Some(0u8)), fp(&0u8));
        assert_ne!(fp(&Some(None::<u8>)), fp(&None::<u8>));
    }

    #[test]
    fn buffering_does_not_change_the_hash() {
        // Whatever the write sizes and where they cross the buffer's end, the hash is
        // SHA-256 of the domain prefix and the encoding.
        let direct = |bytes: &[u8]| -> [u8; 32] {
            Sha256::new()
                .chain_update(DOMAIN)
                .chain_update(bytes)
                .finalize()
                .into()
        };
        for len in (0..300).chain([1000, 4096, 65_536 + 17]) {
            let s = "z".repeat(len);
            let v = (
                len as u64 * 1_000_003,
                s.as_str(),
                vec![s.as_str(); 3],
                -(len as i64),
            );
            assert_eq!(fp(&v).as_bytes(), &direct(&enc(&v)), "{len}");
            let m: HashMap<String, String> =
                (0..len % 37).map(|i| (i.to_string(), s.clone())).collect();
            assert_eq!(fp(&m).as_bytes(), &direct(&enc(&m)), "{len}");
        }
        let ints: Vec<u64> = (0..10_000).map(|i| i * i * 7919).collect();
        assert_eq!(fp(&ints).as_bytes(), &direct(&enc(&ints)));
        let mut b = FingerprintBuilder::new();
        b.arg(&ints);
        b.arg("tail");
        let both = [enc(&ints), enc("tail")].concat();
        assert_eq!(b.finish().unwrap().as_bytes(), &direct(&both));
    }

    #[test]
    fn encoding_is_pinned() {
        // Records store fingerprints: a change to the encoding must change DOMAIN.
        #[derive(Serialize)]
        struct Req<'a> {
            id: u64,
            who: &'a str,
            amounts: Vec<i64>,
            meta: BTreeMap<&'a str, Option<f64>>,
        }
        let req = Req {
            id: 1_733_000_000,
            who: "cus_1",
            amounts: vec![0, -1, 200, -40_000],
            meta: [("b", None), ("a", Some(1.5))].into(),
        };
        #[rustfmt::skip]
        let expected = [
            STRUCT,
            0xA2, b'i', b'd', 0x83, 0x40, 0x7B, 0x4B, 0x67,
            0xA3, b'w', b'h', b'o', 0xA5, b'c', b'u', b's', b'_', b'1',
            0xA7, b'a', b'm', b'o', b'u', b'n', b't', b's',
            SEQ, 0, 0xFF, 0x80, 200, 0x91, 0x3F, 0x9C, END,
            0xA4, b'm', b'e', b't', b'a',
            // (The map's entries in the order of their sort hash.)
            MAP, 2, 0xA1, b'b', NONE, 0xA1, b'a', SOME, FLOAT, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F,
            END,
        ];
        assert_eq!(enc(&req), expected);
        assert_eq!(
            crate::key::hex(fp(&req).as_bytes()),
            "d6afed78945f65a3be7f5ff51956000e92e279220617acaade471c93e2417e24"
        );
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
        // Also from inside a map entry, and from a later argument.
        let m: BTreeMap<u8, Vec<Fails>> = [(1, vec![Fails])].into();
        let err = Fingerprint::of(&m).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let mut b = FingerprintBuilder::new();
        b.arg(&1u8);
        b.arg(&Fails);
        b.arg(&2u8);
        assert!(b.finish().unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn malformed_maps_are_errors() {
        use serde::ser::SerializeMap;
        struct KeyKey;
        impl Serialize for KeyKey {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                m.serialize_key(&1)?;
                m.serialize_key(&2)?;
                m.end()
            }
        }
        struct ValueFirst;
        impl Serialize for ValueFirst {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                m.serialize_value(&1)?;
                m.end()
            }
        }
        struct KeyOnly;
        impl Serialize for KeyOnly {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                m.serialize_key(&1)?;
                m.end()
            }
        }
        assert!(Fingerprint::of(&KeyKey).is_err());
        assert!(Fingerprint::of(&ValueFirst).is_err());
        assert!(Fingerprint::of(&KeyOnly).is_err());
    }
}
