//! The two halves of "retries are safe" together: the client middleware
//! (`idem::http::client::IdempotencyRetry`) against a server behind `IdempotencyLayer`,
//! with the connection dropped after the server recorded the charge — the case where a
//! charge happened but the client saw only an error. The retry carries the same key and
//! gets the recorded response: one charge.
#![cfg(all(feature = "axum", feature = "reqwest"))]

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use idem::MemoryStore;
use idem::http::IdempotencyLayer;
use idem::http::client::IdempotencyRetry;
use idem::http::client::reqwest_middleware::ClientBuilder;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Shop {
    charges: Arc<AtomicUsize>,
    /// Responses to drop on the way out (after the layer recorded them).
    drops_left: Arc<AtomicUsize>,
    /// The `Idempotency-Key` of every attempt that reached the server.
    keys: Arc<Mutex<Vec<String>>>,
}

async fn charge(State(shop): State<Shop>, body: String) -> (StatusCode, String) {
    let n = shop.charges.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("charge {n}: {body}"))
}

/// Outside the idempotency layer: notes the key, lets the layer run and record, then drops
/// the connection instead of answering while `drops_left` lasts (the handler ran; the
/// client sees a transport error).
async fn flaky_network(State(shop): State<Shop>, request: Request, next: Next) -> Response {
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    shop.keys.lock().unwrap().push(key);
    let response = next.run(request).await;
    let drop_it = shop
        .drops_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if drop_it {
        // A panic in a handler's future makes hyper close the connection unanswered.
        panic!("connection lost after the charge (intended)");
    }
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_charge_behind_the_layer_is_one_charge() {
    // The intended panics above would print; keep the test output about the test.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("(intended)") {
            quiet(info);
        }
    }));
    let shop = Shop::default();
    shop.drops_left.store(2, Ordering::SeqCst);
    let app = Router::new()
        .route("/charges", post(charge))
        .layer(IdempotencyLayer::new(MemoryStore::new()).unscoped())
        .layer(middleware::from_fn_with_state(shop.clone(), flaky_network))
        .with_state(shop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/charges", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = ClientBuilder::new(idem::http::client::reqwest::Client::new())
        .with(IdempotencyRetry::new().backoff(Duration::from_millis(5), Duration::from_millis(20)))
        .build();
    let response = client.post(&url).body("500 cents").send().await.unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "the third attempt gets the recorded response"
    );
    assert_eq!(response.text().await.unwrap(), "charge 1: 500 cents");
    assert_eq!(shop.charges.load(Ordering::SeqCst), 1, "one charge");
    let keys = shop.keys.lock().unwrap().clone();
    assert_eq!(
        keys.len(),
        3,
        "two dropped attempts and the one answered: {keys:?}"
    );
    assert!(
        !keys[0].is_empty() && keys.iter().all(|k| *k == keys[0]),
        "{keys:?}"
    );
}
