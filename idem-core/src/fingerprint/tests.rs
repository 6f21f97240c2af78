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
