//! `IdempotencyLayer` on `MemoryStore` against the same axum handler without it, and against
//! the same handler behind a hand-written idempotency middleware doing the same store work
//! (`by_hand`: the header read, the body hashed, one moka entry claimed or read, the response
//! kept and rebuilt), in the same run, through `Router::oneshot` (no sockets: the layer's own
//! cost) and over loopback TCP (`http_tcp`: axum::serve and a reqwest client on one runtime,
//! one kept-alive connection). A fresh key per request (claim + record) and a replay (one
//! lookup, the recorded response rebuilt). The figures that matter are the ratios
//! (BENCHMARKS.md; targets: replay ≤ 1.5×, fresh ≤ 2× a plain request).
//!
//! Wall-clock (criterion's default): run it on a quiet machine.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use idem::MemoryStore;
use idem::http::IdempotencyLayer;
use moka::sync::Cache;
use sha2::{Digest, Sha256};
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

/// What the hand-written middleware keeps per key.
#[derive(Clone)]
enum Slot {
    Running,
    Done {
        fingerprint: [u8; 32],
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
}

/// The least an idempotency middleware on moka does per request, written by hand: the key
/// from the header, SHA-256 over method, path, query and body, one atomic `entry` (claim or
/// read), the response buffered and kept. No lease, expiry, scoping, codec or metrics.
async fn by_hand(
    State(cache): State<Cache<String, Slot>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let Some(key) = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
    else {
        return next.run(request).await;
    };
    let key = key.to_owned();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let mut hash = Sha256::new();
    hash.update(parts.method.as_str());
    hash.update(parts.uri.path());
    hash.update(parts.uri.query().unwrap_or(""));
    hash.update(&body);
    let fingerprint: [u8; 32] = hash.finalize().into();
    let entry = cache.entry(key.clone()).or_insert_with(|| Slot::Running);
    if !entry.is_fresh() {
        return match entry.into_value() {
            Slot::Done {
                fingerprint: stored,
                status,
                content_type,
                body,
            } if stored == fingerprint => {
                let mut response = (status, body).into_response();
                if let Some(value) = content_type {
                    response.headers_mut().insert(header::CONTENT_TYPE, value);
                }
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                response
            }
            Slot::Done { .. } => StatusCode::UNPROCESSABLE_ENTITY.into_response(),
            Slot::Running => StatusCode::CONFLICT.into_response(),
        };
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (head, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    cache.insert(
        key,
        Slot::Done {
            fingerprint,
            status: head.status,
            content_type: head.headers.get(header::CONTENT_TYPE).cloned(),
            body: body.clone(),
        },
    );
    Response::from_parts(head, Body::from(body))
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
    let hand = routes().layer(middleware::from_fn_with_state(
        Cache::new(10_000_000),
        by_hand,
    ));
    runtime.block_on(call(&layered, "replayed"));
    runtime.block_on(call(&hand, "replayed"));
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
    group.bench_function("by_hand_fresh_key", |b| {
        b.to_async(&runtime).iter(|| async {
            let key = format!("k-{}", next.fetch_add(1, Ordering::Relaxed));
            black_box(call(&hand, &key).await)
        })
    });
    group.bench_function("by_hand_replay", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(call(&hand, "replayed").await) })
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
    let hand_url = serve(hand);
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
    group.bench_function("by_hand_fresh_key", |b| {
        b.to_async(&runtime).iter(|| async {
            let key = format!("t-{}", next.fetch_add(1, Ordering::Relaxed));
            black_box(send(&hand_url, key).await)
        })
    });
    group.bench_function("by_hand_replay", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(send(&hand_url, "replayed".into()).await) })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
