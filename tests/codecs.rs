//! The codecs end to end: JSON round-trips what needs `deserialize_any`, bincode says so
//! instead of misreading, postcard replays like bincode.
#![cfg(all(feature = "json", feature = "postcard"))]

mod support;

use idem::{MemoryStore, idempotent};
use serde_json::{Value, json};
use support::{AppError, Calls};

#[idempotent(key = key, store = store, skip(calls), codec = idem::codec::Json)]
async fn as_json(store: &MemoryStore, calls: &Calls, key: &str) -> Result<Value, AppError> {
    calls.hit();
    Ok(json!({"ok": true, "items": [1, 2, 3], "note": null}))
}

#[idempotent(key = key, store = store, skip(calls))]
async fn as_bincode(store: &MemoryStore, calls: &Calls, key: &str) -> Result<Value, AppError> {
    calls.hit();
    Ok(json!({"ok": true}))
}

#[idempotent(key = key, store = store, skip(calls), codec = idem::codec::Postcard)]
async fn as_postcard(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
) -> Result<(u64, String), AppError> {
    Ok((calls.hit() as u64, "postcard".into()))
}

#[tokio::test]
async fn json_replays_values_that_need_deserialize_any() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    let first = as_json(&store, &calls, "k").await.unwrap();
    assert_eq!(as_json(&store, &calls, "k").await.unwrap(), first);
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn bincode_refuses_them_with_a_hint_instead_of_misreading() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    as_bincode(&store, &calls, "k").await.unwrap();
    let err = as_bincode(&store, &calls, "k").await.unwrap_err();
    let Some(idem::Error::Codec(e)) = err.idem() else {
        panic!("expected a codec error, got {err:?}")
    };
    assert!(e.to_string().contains("JSON codec"), "{e}");
    assert_eq!(calls.count(), 1, "the body did not run again");
}

#[tokio::test]
async fn postcard_replays() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    let first = as_postcard(&store, &calls, "k").await.unwrap();
    assert_eq!(as_postcard(&store, &calls, "k").await.unwrap(), first);
    assert_eq!(first, (1, "postcard".into()));
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Ledger {
    debit: u64,
    credit: u64,
    memo: String,
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Event {
    Opened,
    Paid(u64),
    Moved { from: u32, to: u32 },
}

/// The bits of `value`'s record that, flipped, still decode (each into some other value).
fn undetected_flips<C, T>(value: &T) -> Vec<String>
where
    C: idem::codec::Codec,
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = idem::codec::encode::<C, T>(value).unwrap();
    assert_eq!(idem::codec::decode::<C, T>(&bytes).unwrap(), *value);
    let mut undetected = Vec::new();
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        if let Ok(other) = idem::codec::decode::<C, T>(&flipped) {
            undetected.push(format!(
                "{} bit {bit}: {value:?} read as {other:?}",
                C::NAME
            ));
        }
    }
    undetected
}

fn undetected_flips_of_samples<C: idem::codec::Codec>() -> Vec<String> {
    let mut undetected = undetected_flips::<C, _>(&"note-1000-1".to_string());
    undetected.extend(undetected_flips::<C, _>(&1_002_001u64));
    undetected.extend(undetected_flips::<C, _>(&-5i64));
    undetected.extend(undetected_flips::<C, _>(&Ledger {
        debit: 100,
        credit: 7,
        memo: "rent".into(),
    }));
    undetected.extend(undetected_flips::<C, _>(&Event::Moved { from: 1, to: 2 }));
    undetected.extend(undetected_flips::<C, _>(&vec![1u32, 300, 70_000]));
    undetected
}

#[test]
fn every_flipped_bit_of_every_sample_is_an_error_in_every_codec() {
    let mut undetected = undetected_flips_of_samples::<idem::codec::Bincode>();
    undetected.extend(undetected_flips_of_samples::<idem::codec::Postcard>());
    undetected.extend(undetected_flips_of_samples::<idem::codec::Json>());
    assert!(
        undetected.is_empty(),
        "{} flipped bits decoded, e.g.:\n{}",
        undetected.len(),
        undetected[..undetected.len().min(10)].join("\n")
    );
}
