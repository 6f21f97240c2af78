//! Requests through `idem::http` count in the same counters as `#[idempotent]` calls, so the
//! counters tell how many duplicates the layer absorbed.
#![cfg(all(feature = "axum", feature = "metrics"))]

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use idem::MemoryStore;
use idem::http::IdempotencyLayer;

mod support;
use support::counters::Counters;

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
    let recorder = Counters::default();
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
    let get = |name: &str, outcome: &str| {
        recorder.total(
            name,
            &[("function", "tests.http.metrics"), ("outcome", outcome)],
        )
    };
    assert_eq!(get("idem_executions_total", "executed"), 1);
    assert_eq!(
        get("idem_executions_total", "released"),
        1,
        "the 502 released its key"
    );
    assert_eq!(get("idem_replays_total", "replayed"), 2);
    assert_eq!(get("idem_mismatches_total", "mismatch"), 1);
}
