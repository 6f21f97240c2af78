//! Each call is one `idempotent` span whose `outcome` says what happened. (Alone in its
//! binary: a span callsite first hit on another thread while no subscriber is set would be
//! cached as disabled — the metrics test lives in tests/metrics.rs for that reason.)

mod support;

use idem::{MemoryStore, idempotent};
use std::sync::{Arc, Mutex};
use support::{AppError, Calls};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[idempotent(key = key, store = store, skip(calls, fail))]
async fn observed(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
    amount: u32,
    fail: bool,
) -> Result<u32, AppError> {
    calls.hit();
    if fail {
        Err(AppError::Declined)
    } else {
        Ok(amount)
    }
}

/// Collects the `outcome` and `key` fields of `idempotent` spans.
#[derive(Clone, Default)]
struct Outcomes(Arc<Mutex<Vec<(String, String)>>>);

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().into(), value.into()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().into(), format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Outcomes {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "idempotent" {
            attrs.record(&mut Fields(&mut self.0.lock().unwrap()));
        }
    }
    fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
}

#[tokio::test]
async fn every_call_records_its_outcome_on_a_span() {
    let outcomes = Outcomes::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(outcomes.clone()));
    let store = MemoryStore::new();
    let calls = Calls::default();
    observed(&store, &calls, "a", 1, false).await.unwrap();
    observed(&store, &calls, "a", 1, false).await.unwrap();
    observed(&store, &calls, "a", 2, false).await.unwrap_err();
    observed(&store, &calls, "b", 1, true).await.unwrap_err();

    let fields = outcomes.0.lock().unwrap().clone();
    let of = |name: &str| {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("outcome"),
        ["executed", "replayed", "mismatch", "released"]
    );
    // The key is a short digest, never the raw key or payload.
    for key in of("key") {
        assert_eq!(key.len(), 16, "{key}");
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
    }
    assert!(
        of("function")
            .iter()
            .all(|f| f.ends_with("observability::observed")),
        "{fields:?}"
    );
}
