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
//! `benches/fingerprint.rs` take 4 bytes here, 5 in bincode), and every write is a copy
//! into a 128-byte buffer that SHA-256 only sees as whole blocks: a `Sha256::update` per
//! tag costs more than the copy.
//!
//! Everything here — tags, integer forms, the domain prefix, the map order and its hash —
//! is part of every fingerprint stored. Changing any of it changes fingerprints, so records
//! stored before the change fail their payload check on replay (`Error::PayloadMismatch`);
//! such a change takes a new domain prefix, and a note in the changelog.
//!
//! # Why SHA-256
//!
//! By measurement (`benches/fingerprint.rs`; the figures are in BENCHMARKS.md): on CPUs
//! with SHA instructions, SHA-256 is the faster of the two or close to BLAKE3 at the sizes
//! requests typically have (up to a few KiB); BLAKE3 only pays off for large payloads,
//! where its SIMD parallelism wins.

use serde::ser::{self, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use crate::error::CodecError;

mod encoder;
mod map;
mod sink;
#[cfg(test)]
mod tests;

use encoder::*;
use map::*;
use sink::*;

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
    CodecError::with_source("fingerprint", "hash an argument", e)
}

/// Hashed before the arguments: names the encoding, which a new version must change.
const DOMAIN: &[u8] = b"idem/fp/v2\0";
