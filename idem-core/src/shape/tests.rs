use super::*;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

fn bin<T: DeserializeOwned>() -> Shape {
    Shape::of::<T>(false)
}

fn traced<T: DeserializeOwned>() -> Shape {
    let shape = bin::<T>();
    assert!(shape.is_checked(), "{}", std::any::type_name::<T>());
    shape
}

#[test]
fn primitives_differ() {
    let shapes = [
        traced::<i64>(),
        traced::<u64>(),
        traced::<u8>(),
        traced::<i32>(),
        traced::<bool>(),
        traced::<String>(),
        traced::<char>(),
        traced::<f64>(),
        traced::<()>(),
        traced::<Option<u64>>(),
        traced::<Vec<u64>>(),
        traced::<(u64, u64)>(),
        traced::<[u64; 3]>(),
        traced::<BTreeMap<String, u64>>(),
    ];
    for (i, a) in shapes.iter().enumerate() {
        for b in &shapes[i + 1..] {
            assert_ne!(a, b);
        }
    }
    assert_eq!(traced::<String>(), traced::<Box<str>>());
    assert_eq!(
        traced::<HashMap<String, u64>>(),
        traced::<BTreeMap<String, u64>>()
    );
}

mod v1 {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct Transfer {
        pub(super) _debit: u64,
        pub(super) _credit: u64,
    }
}

mod v2 {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct Transfer {
        pub(super) _credit: u64,
        pub(super) _debit: u64,
    }

    /// v1's type, renamed and moved.
    #[derive(Deserialize)]
    pub(super) struct Movement {
        pub(super) _debit: u64,
        pub(super) _credit: u64,
    }
}

#[test]
fn field_order_and_names_count_type_names_do_not() {
    assert_ne!(traced::<v1::Transfer>(), traced::<v2::Transfer>());
    assert_eq!(traced::<v1::Transfer>(), traced::<v2::Movement>());
    assert_ne!(traced::<v1::Transfer>(), traced::<(u64, u64)>());
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum Narrow {
    A(u8),
    B { cents: u16 },
    C,
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum Wide {
    A(u8),
    B { cents: u32 },
    C,
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum Reordered {
    B { cents: u16 },
    A(u8),
    C,
}

#[test]
fn every_variant_is_traced() {
    assert_ne!(traced::<Narrow>(), traced::<Wide>());
    assert_ne!(traced::<Narrow>(), traced::<Reordered>());
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum List {
    Cons(u64, Box<List>),
    Nil,
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum SignedList {
    Cons(i64, Box<SignedList>),
    Nil,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Tree {
    label: String,
    children: Vec<Tree>,
    parent: Option<Box<Tree>>,
    kind: Kind,
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum Kind {
    Leaf,
    Forest(BTreeMap<String, Tree>),
    Pair(Box<Tree>, Box<Tree>),
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Wrapped(Box<Option<Wrapped>>);

/// Uninhabited: no finite value exists.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Endless {
    next: Box<Endless>,
}

#[derive(Deserialize)]
enum Never {}

/// Recursive without a named container on the way: serde cannot tell it recurses.
struct Hidden;

impl<'de> Deserialize<'de> for Hidden {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Hidden;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("nested sequences")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Hidden, A::Error> {
                while seq.next_element::<Hidden>()?.is_some() {}
                Ok(Hidden)
            }
        }
        d.deserialize_seq(V)
    }
}

#[test]
fn recursive_types_terminate() {
    assert_eq!(bin::<Hidden>(), Shape::UNCHECKED);
    assert_ne!(traced::<List>(), traced::<SignedList>());
    traced::<Tree>();
    traced::<Kind>();
    traced::<Wrapped>();
    traced::<Endless>();
    traced::<Never>();
    assert_ne!(traced::<Tree>(), traced::<Kind>());
}

/// Accepts only one string, as a parser of some private format would.
struct Magic;

impl<'de> Deserialize<'de> for Magic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "magic" {
            Ok(Magic)
        } else {
            Err(de::Error::custom("not magic"))
        }
    }
}

struct Panics;

impl<'de> Deserialize<'de> for Panics {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("a Deserialize that panics (expected by the test)")
    }
}

/// Exactly 32 bytes, read as bytes.
#[allow(dead_code)]
struct Digest32([u8; 32]);

impl<'de> Deserialize<'de> for Digest32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Digest32;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Digest32, E> {
                v.try_into().map(Digest32).map_err(E::custom)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A string parsed on the way in, the way date, UUID and URL types read themselves.
struct Parsed<const KIND: u8>;

impl<'de, const KIND: u8> Deserialize<'de> for Parsed<KIND> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let b = s.as_bytes();
        let ok = match KIND {
            // 1970-01-01T00:00:00Z
            b'd' => b.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z',
            // 8-4-4-4-12 hex digits
            b'u' => {
                b.len() == 36
                    && s.split('-').map(str::len).eq([8, 4, 4, 4, 12])
                    && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
            }
            // scheme://host/
            _ => s
                .split_once("://")
                .is_some_and(|(_, rest)| rest.contains('/')),
        };
        if ok {
            Ok(Parsed)
        } else {
            Err(de::Error::custom("unparsable"))
        }
    }
}

/// Checked as a whole after its fields are read.
#[derive(Deserialize)]
#[serde(try_from = "(u32, u32)")]
#[allow(dead_code)]
struct Range(u32, u32);

impl TryFrom<(u32, u32)> for Range {
    type Error = &'static str;

    fn try_from((start, end): (u32, u32)) -> Result<Self, Self::Error> {
        if start < end {
            Ok(Range(start, end))
        } else {
            Err("empty range")
        }
    }
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Picky {
    id: std::num::NonZeroU32,
    at: std::net::SocketAddr,
    digest: Digest32,
    when: Parsed<b'd'>,
    uuid: Parsed<b'u'>,
    url: Parsed<b'l'>,
    range: Range,
    then: Narrow,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct PickyWide {
    id: std::num::NonZeroU32,
    at: std::net::SocketAddr,
    digest: Digest32,
    when: Parsed<b'd'>,
    uuid: Parsed<b'u'>,
    url: Parsed<b'l'>,
    range: Range,
    then: Wide,
}

#[test]
fn placeholders_get_past_picky_types() {
    // Every field after the picky ones is still traced: the last differs.
    assert_ne!(traced::<Picky>(), traced::<PickyWide>());
    assert_ne!(
        Shape::of::<Picky>(true),
        Shape::of::<PickyWide>(true),
        "human-readable"
    );
}

#[test]
fn what_cannot_be_traced_is_unchecked_not_an_error() {
    // It refuses every placeholder, but what it asks for is known: a string.
    assert_eq!(traced::<Magic>(), traced::<String>());
    assert_eq!(traced::<(u8, Magic)>(), traced::<(u8, String)>());
    // What comes after it is not.
    assert_eq!(bin::<(Magic, u8)>(), Shape::UNCHECKED);
    assert_eq!(bin::<Vec<Panics>>(), Shape::UNCHECKED);
    assert!(!Shape::UNCHECKED.is_checked());
    assert_eq!(format!("{:?}", Shape::UNCHECKED), "Shape(unchecked)");
}

#[test]
fn human_readability_is_respected() {
    // std's addresses are strings to human-readable formats, enums of byte arrays to
    // the others.
    assert_eq!(
        Shape::of::<std::net::IpAddr>(true),
        Shape::of::<String>(true)
    );
    assert_ne!(
        Shape::of::<std::net::IpAddr>(false),
        Shape::of::<String>(false)
    );
    assert!(Shape::of::<std::net::IpAddr>(false).is_checked());
}

#[cfg(feature = "json")]
#[test]
fn deserialize_any_is_traced_as_any() {
    let value = Shape::of::<serde_json::Value>(true);
    assert!(value.is_checked());
    assert_ne!(value, Shape::of::<String>(true));
}

#[test]
fn a_cell_serves_its_first_type_and_falls_back_for_others() {
    static CELL: ShapeCell = ShapeCell::new();
    assert_eq!(CELL.get::<i64>(false), bin::<i64>());
    assert_eq!(CELL.get::<u64>(false), bin::<u64>());
    assert_eq!(CELL.get::<i64>(false), bin::<i64>());
    assert_eq!(CELL.get::<i64>(true), Shape::of::<i64>(true));
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Big {
    a: [u64; 32],
    b: Vec<(String, Option<Narrow>)>,
    c: Tree,
}

#[test]
fn shapes_are_stable_and_round_trip() {
    assert_eq!(Shape::trace::<Big>(false), Shape::trace::<Big>(false));
    let shape = traced::<Big>();
    assert_eq!(Shape::from_bytes(shape.to_bytes()), shape);
}
