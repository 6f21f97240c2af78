//! What a caller sees: replays, mismatches, error policies, TTL, scopes and namespaces.

mod support;

use idem::{MemoryStore, idempotent};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use support::{AppError, Calls, PayError};

#[derive(Clone, Serialize)]
struct Charge {
    payment_id: String,
    user_id: u64,
    cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    execution: usize,
    cents: u64,
}

fn charge_req(id: &str, cents: u64) -> Charge {
    Charge {
        payment_id: id.into(),
        user_id: 7,
        cents,
    }
}

#[idempotent(key = req.payment_id, scope = req.user_id, store = store, skip(calls))]
async fn charge(store: &MemoryStore, calls: &Calls, req: Charge) -> Result<Receipt, AppError> {
    Ok(Receipt {
        execution: calls.hit(),
        cents: req.cents,
    })
}

#[tokio::test]
async fn five_calls_run_the_body_once() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    let mut receipts = Vec::new();
    for _ in 0..5 {
        receipts.push(
            charge(&store, &calls, charge_req("p-1", 500))
                .await
                .unwrap(),
        );
    }
    assert_eq!(calls.count(), 1);
    assert!(receipts.iter().all(|r| *r == receipts[0]), "{receipts:?}");
    assert_eq!(
        receipts[0],
        Receipt {
            execution: 1,
            cents: 500
        }
    );
}

#[tokio::test]
async fn another_payload_under_the_same_key_is_refused() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    charge(&store, &calls, charge_req("p-1", 500))
        .await
        .unwrap();
    let err = charge(&store, &calls, charge_req("p-1", 900))
        .await
        .unwrap_err();
    assert!(
        matches!(err.idem(), Some(idem::Error::PayloadMismatch)),
        "{err:?}"
    );
    assert_eq!(err.idem().unwrap().http_status(), 422);
    // The original still replays.
    let replay = charge(&store, &calls, charge_req("p-1", 500))
        .await
        .unwrap();
    assert_eq!(replay.execution, 1);
    assert_eq!(calls.count(), 1);
}

#[idempotent(key = key, store = store, skip(calls))]
async fn tally(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
    items: HashMap<String, i64>,
) -> Result<i64, AppError> {
    calls.hit();
    Ok(items.values().sum())
}

#[tokio::test]
async fn maps_in_another_order_replay() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    let mut forward = HashMap::new();
    let mut backward = HashMap::with_capacity(256);
    for i in 0..100 {
        forward.insert(format!("item-{i}"), i);
    }
    for i in (0..100).rev() {
        backward.insert(format!("item-{i}"), i);
    }
    let a = tally(&store, &calls, "k", forward).await.unwrap();
    let b = tally(&store, &calls, "k", backward).await.unwrap();
    assert_eq!((a, b, calls.count()), (4950, 4950, 1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_map_replays_whatever_its_insertion_order(
        entries in proptest::collection::vec(("[a-z]{1,8}", any::<i64>()), 0..40),
        seed in any::<u64>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let store = MemoryStore::new();
            let calls = Calls::default();
            let first: HashMap<String, i64> = entries.iter().cloned().collect();
            // The same entries, inserted in another order into a map of another capacity.
            let mut shuffled: Vec<(String, i64)> = first.clone().into_iter().collect();
            shuffled.sort_by_key(|(k, _)| (seed.rotate_left(k.len() as u32) ^ k.len() as u64, k.clone()));
            let mut second = HashMap::with_capacity(shuffled.len() * 3);
            second.extend(shuffled);
            let sum = |m: &HashMap<String, i64>| m.values().fold(0i64, |a, v| a.wrapping_add(*v));
            let expected = sum(&first);
            let a = tally_wrapping(&store, &calls, "k", first).await.unwrap();
            let b = tally_wrapping(&store, &calls, "k", second).await.unwrap();
            prop_assert_eq!(a, expected);
            prop_assert_eq!(b, expected);
            prop_assert_eq!(calls.count(), 1);
            Ok(())
        })?;
    }
}

#[idempotent(key = key, store = store, skip(calls))]
async fn tally_wrapping(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
    items: HashMap<String, i64>,
) -> Result<i64, AppError> {
    calls.hit();
    Ok(items.values().fold(0i64, |a, v| a.wrapping_add(*v)))
}

#[idempotent(key = key, store = store, skip(calls, fail))]
async fn flaky(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
    fail: bool,
) -> Result<usize, AppError> {
    let n = calls.hit();
    if fail { Err(AppError::Declined) } else { Ok(n) }
}

#[tokio::test]
async fn an_error_is_released_and_the_retry_runs() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    assert!(matches!(
        flaky(&store, &calls, "k", true).await,
        Err(AppError::Declined)
    ));
    assert_eq!(flaky(&store, &calls, "k", false).await.unwrap(), 2);
    assert_eq!(
        flaky(&store, &calls, "k", true).await.unwrap(),
        2,
        "success is replayed"
    );
    assert_eq!(calls.count(), 2);
}

#[idempotent(key = key, store = store, skip(calls, error), errors = cache)]
async fn cached_failure(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
    error: Option<PayError>,
) -> Result<usize, PayError> {
    let n = calls.hit();
    error.map_or(Ok(n), Err)
}

#[tokio::test]
async fn errors_cache_replays_the_error() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    let declined = PayError::Declined { code: 51 };
    assert_eq!(
        cached_failure(&store, &calls, "k", Some(declined.clone())).await,
        Err(declined.clone())
    );
    assert_eq!(
        cached_failure(&store, &calls, "k", None).await,
        Err(declined)
    );
    assert_eq!(calls.count(), 1);
}

fn is_permanent(e: &PayError) -> bool {
    matches!(e, PayError::Declined { .. })
}

#[idempotent(key = key, store = store, skip(calls, error), errors = cache_if(is_permanent))]
async fn predicate_cached(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
    error: Option<PayError>,
) -> Result<usize, PayError> {
    let n = calls.hit();
    error.map_or(Ok(n), Err)
}

#[tokio::test]
async fn cache_if_records_only_permanent_errors() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    // Transient: released, the retry runs and succeeds.
    assert_eq!(
        predicate_cached(&store, &calls, "a", Some(PayError::Transient)).await,
        Err(PayError::Transient)
    );
    assert_eq!(predicate_cached(&store, &calls, "a", None).await, Ok(2));
    // Permanent: recorded, the retry gets it back without running.
    let declined = PayError::Declined { code: 5 };
    assert_eq!(
        predicate_cached(&store, &calls, "b", Some(declined.clone())).await,
        Err(declined.clone())
    );
    assert_eq!(
        predicate_cached(&store, &calls, "b", None).await,
        Err(declined)
    );
    assert_eq!(calls.count(), 3);
}

#[idempotent(key = key, store = store, skip(calls), ttl = "300ms")]
async fn short_lived(store: &MemoryStore, calls: &Calls, key: &str) -> Result<usize, AppError> {
    Ok(calls.hit())
}

#[tokio::test]
async fn after_the_ttl_the_body_runs_again() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    assert_eq!(short_lived(&store, &calls, "k").await.unwrap(), 1);
    assert_eq!(short_lived(&store, &calls, "k").await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(short_lived(&store, &calls, "k").await.unwrap(), 2);
}

#[tokio::test]
async fn scopes_keep_records_apart() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    let mut other_user = charge_req("p-1", 500);
    other_user.user_id = 8;
    charge(&store, &calls, charge_req("p-1", 500))
        .await
        .unwrap();
    let r = charge(&store, &calls, other_user).await.unwrap();
    assert_eq!(r.execution, 2);
}

#[idempotent(key = key, store = store, skip(calls))]
async fn first_function(store: &MemoryStore, calls: &Calls, key: &str) -> Result<usize, AppError> {
    Ok(calls.hit())
}

#[idempotent(key = key, store = store, skip(calls))]
async fn second_function(store: &MemoryStore, calls: &Calls, key: &str) -> Result<usize, AppError> {
    Ok(calls.hit() * 100)
}

#[tokio::test]
async fn two_functions_never_share_records() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    assert_eq!(first_function(&store, &calls, "k").await.unwrap(), 1);
    assert_eq!(second_function(&store, &calls, "k").await.unwrap(), 200);
}

#[idempotent(key = key, store = store, skip(calls), name = "billing.charge")]
async fn charge_v1(store: &MemoryStore, calls: &Calls, key: &str) -> Result<usize, AppError> {
    Ok(calls.hit())
}

#[idempotent(key = key, store = store, skip(calls), name = "billing.charge")]
async fn charge_v2_renamed(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
) -> Result<usize, AppError> {
    Ok(calls.hit() + 1000)
}

#[tokio::test]
async fn name_keeps_records_across_a_rename() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    assert_eq!(charge_v1(&store, &calls, "k").await.unwrap(), 1);
    assert_eq!(charge_v2_renamed(&store, &calls, "k").await.unwrap(), 1);
    assert_eq!(calls.count(), 1);
}

#[idempotent(key = key, store = store, skip(calls))]
async fn optional_key(
    store: &MemoryStore,
    calls: &Calls,
    key: Option<String>,
) -> Result<usize, AppError> {
    Ok(calls.hit())
}

#[tokio::test]
async fn a_missing_key_is_refused_and_nothing_is_recorded() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    let err = optional_key(&store, &calls, None).await.unwrap_err();
    assert!(
        matches!(err.idem(), Some(idem::Error::MissingKey)),
        "{err:?}"
    );
    assert_eq!(err.idem().unwrap().http_status(), 400);
    let err = optional_key(&store, &calls, Some(String::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(err.idem(), Some(idem::Error::InvalidKey)),
        "{err:?}"
    );
    assert_eq!(calls.count(), 0);
    idem::Store::purge_expired(&store).await.unwrap();
    assert_eq!(store.entry_count(), 0);
    assert_eq!(
        optional_key(&store, &calls, Some("k".into()))
            .await
            .unwrap(),
        1
    );
}

macro_rules! falsy {
    ($name:ident, $ty:ty, $value:expr) => {
        #[idempotent(key = "falsy", store = store, skip(calls))]
        async fn $name(store: &MemoryStore, calls: &Calls) -> Result<$ty, AppError> {
            calls.hit();
            Ok($value)
        }
    };
}

falsy!(unit, (), ());
falsy!(none, Option<u32>, None);
falsy!(zero, u64, 0);
falsy!(empty_vec, Vec<String>, Vec::new());
falsy!(empty_string, String, String::new());
falsy!(no, bool, false);

#[tokio::test]
async fn falsy_outputs_are_recorded_and_replayed() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    for _ in 0..2 {
        unit(&store, &calls).await.unwrap();
        assert_eq!(none(&store, &calls).await.unwrap(), None);
        assert_eq!(zero(&store, &calls).await.unwrap(), 0);
        assert!(empty_vec(&store, &calls).await.unwrap().is_empty());
        assert!(empty_string(&store, &calls).await.unwrap().is_empty());
        assert!(!no(&store, &calls).await.unwrap());
    }
    assert_eq!(
        calls.count(),
        6,
        "each falsy output ran once and replayed once"
    );
}

#[idempotent(key = key, skip(calls))]
async fn on_the_default_store(calls: &Calls, key: &str) -> Result<usize, AppError> {
    Ok(calls.hit())
}

#[tokio::test]
async fn functions_without_store_use_the_default_store() {
    let calls = Calls::default();
    idem::set_default_store(MemoryStore::new());
    assert_eq!(on_the_default_store(&calls, "k").await.unwrap(), 1);
    assert_eq!(on_the_default_store(&calls, "k").await.unwrap(), 1);
}
