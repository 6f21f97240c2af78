//! Requests through `idem::http` count in the same counters as `#[idempotent]` calls, so the
//! counters tell how many duplicates the layer absorbed.
#![cfg(all(feature = "axum", feature = "metrics"))]

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use idem::MemoryStore;
use idem::http::IdempotencyLayer;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters by `name{outcome}`, for the layer's namespace only.
#[derive(Default)]
struct Counts(Mutex<HashMap<String, Arc<Count>>>);

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl Recorder for Counts {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
        };
        if label("function").as_deref() != Some("tests.http.metrics") {
            return Counter::noop();
        }
        let outcome = label("outcome").unwrap_or_default();
        let name = format!("{}{{{outcome}}}", key.name());
        Counter::from_arc(self.0.lock().unwrap().entry(name).or_default().clone())
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

async fn request(client: &reqwest::Client, url: &str, key: &str, body: &str) -> u16 {
    let response = client
        .post(url)
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[test]
fn layer_outcomes_are_counted() {
    let recorder = Counts::default();
    metrics::with_local_recorder(&recorder, || {
        // One thread: the server's tasks run under the recorder too.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let layer = IdempotencyLayer::new(MemoryStore::new())
                .unscoped()
                .namespace("tests.http.metrics");
            let app = Router::new()
                .route("/pay", post(|| async { StatusCode::CREATED }))
                .route("/fail", post(|| async { StatusCode::BAD_GATEWAY }))
                .layer(layer);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            let client = reqwest::Client::new();
            let pay = format!("{base}/pay");
            assert_eq!(request(&client, &pay, "k1", "a").await, 201);
            assert_eq!(request(&client, &pay, "k1", "a").await, 201);
            assert_eq!(request(&client, &pay, "k1", "a").await, 201);
            assert_eq!(request(&client, &pay, "k1", "b").await, 422);
            let fail = format!("{base}/fail");
            assert_eq!(request(&client, &fail, "k2", "a").await, 502);
        });
    });
    let counts = recorder.0.lock().unwrap();
    let get = |name: &str| counts.get(name).map_or(0, |c| c.0.load(Ordering::SeqCst));
    assert_eq!(
        get("idem_executions_total{executed}"),
        1,
        "{:?}",
        counts.keys()
    );
    assert_eq!(
        get("idem_executions_total{released}"),
        1,
        "the 502 released its key"
    );
    assert_eq!(get("idem_replays_total{replayed}"), 2);
    assert_eq!(get("idem_mismatches_total{mismatch}"), 1);
}
