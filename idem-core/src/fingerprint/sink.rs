//! Where the encoding goes: straight into SHA-256 in whole blocks, or a map's scratch buffer.

use super::*;

/// Where the encoding goes: the hasher, or a map's scratch buffer (one encoding for both).
///
/// Most values are a tag and a few bytes (an integer, a field name). The sinks write them
/// with fixed-size copies and one update of their length, rather than a call to `memcpy`
/// and a length update per piece: at this size, those cost more than the bytes.
pub(super) trait Sink {
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
pub(super) fn copy_short(dst: &mut [u8], src: &[u8]) {
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
pub(super) fn word<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().unwrap()
}

#[inline(always)]
pub(super) fn word_mut<const N: usize>(bytes: &mut [u8]) -> &mut [u8; N] {
    bytes.try_into().unwrap()
}

/// The size of the buffer in front of SHA-256: a multiple of its 64-byte block.
pub(super) const BUF: usize = 128;

/// SHA-256 behind a small buffer. Each `Sha256::update` costs a few ns of bookkeeping, more
/// than most writes here, so writes are copies into `buf` and the hasher gets whole blocks
/// only: a full buffer, or the whole blocks of a long string, passed without a copy.
pub(super) struct HashSink {
    hasher: Sha256,
    buf: [u8; BUF],
    len: usize,
}

impl HashSink {
    /// A sink that has taken [`DOMAIN`].
    #[inline]
    pub(super) fn new() -> HashSink {
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
    pub(super) fn finish(&mut self) -> [u8; 32] {
        self.hasher.update(&self.buf[..self.len]);
        self.hasher.finalize_reset().into()
    }

    /// Any write: the fast paths below only handle short ones that fit.
    #[cold]
    #[inline(never)]
    pub(super) fn write_slow(&mut self, bytes: &[u8]) {
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
    pub(super) fn tag_bytes_slow(&mut self, tag: u8, bytes: &[u8]) {
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
