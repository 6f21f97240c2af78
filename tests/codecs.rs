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
