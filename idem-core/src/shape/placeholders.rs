//! The values a trace answers with, tried in turn when a type refuses one.

use super::*;

// Placeholders: values tried in turn where a type's `Deserialize` refuses the previous one
// (NonZero integers, strings parsed as dates, UUIDs, URLs, addresses; fixed-size bytes).
pub(super) const BOOLS: &[bool] = &[false, true];
pub(super) const UNSIGNED: &[u8] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 42, 64, 100, 127, 255,
];
pub(super) const SIGNED: &[i8] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 42, 64, 100, 127, -1,
];
pub(super) const FLOATS: &[f32] = &[0.0, 1.0, 0.5, -1.0];
pub(super) const CHARS: &[char] = &['a', '0', ' '];
pub(super) const STRS: &[&str] = &[
    "",
    "a",
    "0",
    "1970-01-01T00:00:00Z",
    "1970-01-01T00:00:00",
    "1970-01-01",
    "00:00:00",
    "00000000-0000-0000-0000-000000000000",
    "http://localhost/",
    "127.0.0.1",
    "127.0.0.1:80",
    "::1",
    "1s",
    "0.0",
    "false",
    "00000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
];
pub(super) const ZEROS: [u8; 65] = [0; 65];
pub(super) const BYTE_LENS: &[usize] = &[0, 1, 2, 4, 8, 12, 16, 20, 24, 32, 33, 48, 64, 65];
/// `deserialize_any`: unit, "", 0, false, an empty sequence, an empty map.
pub(super) const ANYS: usize = 6;

pub(super) fn placeholders(leaf: Leaf) -> usize {
    match leaf {
        Leaf::Bool => BOOLS.len(),
        Leaf::I8 | Leaf::I16 | Leaf::I32 | Leaf::I64 | Leaf::I128 => SIGNED.len(),
        Leaf::U8 | Leaf::U16 | Leaf::U32 | Leaf::U64 | Leaf::U128 => UNSIGNED.len(),
        Leaf::F32 | Leaf::F64 => FLOATS.len(),
        Leaf::Char => CHARS.len(),
        Leaf::Str => STRS.len(),
        Leaf::Bytes => BYTE_LENS.len(),
        Leaf::Unit => 1,
    }
}

pub(super) fn feed<'de, V: Visitor<'de>>(leaf: Leaf, i: usize, visitor: V) -> R<V::Value> {
    let (s, u) = (SIGNED[i % SIGNED.len()], UNSIGNED[i % UNSIGNED.len()]);
    match leaf {
        Leaf::Bool => visitor.visit_bool(BOOLS[i % BOOLS.len()]),
        Leaf::I8 => visitor.visit_i8(s),
        Leaf::I16 => visitor.visit_i16(s.into()),
        Leaf::I32 => visitor.visit_i32(s.into()),
        Leaf::I64 => visitor.visit_i64(s.into()),
        Leaf::I128 => visitor.visit_i128(s.into()),
        Leaf::U8 => visitor.visit_u8(u),
        Leaf::U16 => visitor.visit_u16(u.into()),
        Leaf::U32 => visitor.visit_u32(u.into()),
        Leaf::U64 => visitor.visit_u64(u.into()),
        Leaf::U128 => visitor.visit_u128(u.into()),
        Leaf::F32 => visitor.visit_f32(FLOATS[i % FLOATS.len()]),
        Leaf::F64 => visitor.visit_f64(FLOATS[i % FLOATS.len()].into()),
        Leaf::Char => visitor.visit_char(CHARS[i % CHARS.len()]),
        Leaf::Str => visitor.visit_str(STRS[i % STRS.len()]),
        Leaf::Bytes => visitor.visit_bytes(&ZEROS[..BYTE_LENS[i % BYTE_LENS.len()]]),
        Leaf::Unit => visitor.visit_unit(),
    }
}
