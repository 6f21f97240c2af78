//! Maps in canonical order: entries encoded apart, then sorted.

use super::*;

/// Encodes a map's entries into a buffer of its own, then writes them sorted into the
/// parent: the same entries in any order give the same bytes. A map inside an entry (at any
/// depth) does the same into its own buffer, then appends its sorted form to this one.
pub(super) struct MapEncoder<'a, S> {
    parent: &'a mut S,
    /// The entries' encodings (key, then value), back to back.
    buf: Vec<u8>,
    /// Where each entry starts in `buf`; it ends where the next one starts.
    starts: Vec<usize>,
    /// Whether a key has been written whose value is awaited.
    has_key: bool,
}

impl<'a, S> MapEncoder<'a, S> {
    pub(super) fn new(parent: &'a mut S, len: Option<usize>) -> Self {
        // A guess at the size (24 bytes an entry, padding included), capped: `len` comes from
        // the value.
        let len = len.unwrap_or(0).min(4096);
        MapEncoder {
            parent,
            buf: Vec::with_capacity(len * 24),
            starts: Vec::with_capacity(len),
            has_key: false,
        }
    }
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
pub(super) fn sort_hash(entry: &[u8]) -> u64 {
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
