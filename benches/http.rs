//! `IdempotencyLayer` on `MemoryStore` against the same axum handler without it, in the same
//! run, through `Router::oneshot` (no sockets: the layer's own cost) and over loopback TCP
//! (`http_tcp`: axum::serve and a reqwest client on one runtime, one kept-alive connection). A fresh key per request
//! (claim + record) and a replay (one lookup, the recorded response rebuilt). The figure that
//! matters is the ratio (BENCHMARKS.md; targets: replay ≤ 1.5×, fresh ≤ 2× a plain request).
//!
//! Wall-clock (criterion's default): run it on a quiet machine.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use axum::routing::post;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use idem::MemoryStore;
use idem::http::IdempotencyLayer;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use tower::ServiceExt;

const BODY: &str =
    r#"{"amount":500,"currency":"eur","customer":"cus_123","description":"order 42"}"#;

/// The handler: a 201 with a JSON body, like a payment's.
fn routes() -> Router {
    Router::new().route(
        "/payments",
        post(|body: Bytes| async move {
            (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
        }),
    )
}

fn request(key: &str) -> Request<Body> {
    Request::post("/payments")
        .header("idempotency-key", key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(BODY))
        .unwrap()
}

/// One request through `app`, its body read.
async fn call(app: &Router, key: &str) -> Bytes {
    let response = app.clone().oneshot(request(key)).await.unwrap();
    assert!(response.status().is_success());
    response.into_body().collect().await.unwrap().to_bytes()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plain = routes();
    let layered = routes().layer(IdempotencyLayer::new(MemoryStore::new()).unscoped());
    runtime.block_on(call(&layered, "replayed"));
    let next = AtomicU64::new(0);

    let mut group = c.benchmark_group("http");
    group.bench_function("plain", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(call(&plain, "k").await) })
    });
    group.bench_function("layer_fresh_key", |b| {
        b.to_async(&runtime).iter(|| async {
            let key = format!("k-{}", next.fetch_add(1, Ordering::Relaxed));
            black_box(call(&layered, &key).await)
        })
    });
    group.bench_function("layer_replay", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(call(&layered, "replayed").await) })
    });
    group.finish();

    // Over loopback TCP: what a client sees.
    let serve = |app: Router| {
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/payments", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            url
        })
    };
    let plain_url = serve(routes());
    let layered_url = serve(layered);
    let client = reqwest::Client::new();
    let send = |url: &str, key: String| {
        let request = client
            .post(url)
            .header("idempotency-key", key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(BODY);
        async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success());
            response.bytes().await.unwrap()
        }
    };
    let mut group = c.benchmark_group("http_tcp");
    group.bench_function("plain", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(send(&plain_url, "k".into()).await) })
    });
    group.bench_function("layer_fresh_key", |b| {
        b.to_async(&runtime).iter(|| async {
            let key = format!("t-{}", next.fetch_add(1, Ordering::Relaxed));
            black_box(send(&layered_url, key).await)
        })
    });
    group.bench_function("layer_replay", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(send(&layered_url, "replayed".into()).await) })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
