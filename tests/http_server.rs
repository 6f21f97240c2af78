//! `idem::http` as a user's server runs it: a real axum server over TCP, a real HTTP client
//! (reqwest), and every store (memory and SQLite always; PostgreSQL and MariaDB when their
//! URLs are set, see `support/sql.rs`). Handlers count their runs, so "runs once" is counted,
//! not assumed.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql"
))]

mod support;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use idem::http::{IdempotencyKey, IdempotencyLayer, problem};
use idem::{Key, MemoryStore, Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::sql::{Backend, unique};
use tokio::sync::watch;
use tokio::task::JoinSet;

// ---- the application under test -------------------------------------------------------

/// The handlers' shared state: how many times a handler body ran, and a gate the slow
/// handler waits at.
#[derive(Clone)]
struct App {
    runs: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

impl App {
    fn new() -> App {
        App {
            runs: Arc::default(),
            gate: watch::channel(false).0,
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn run(&self) -> usize {
        self.runs.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

/// 201 with a `Location` (kept), an `X-Run` (not kept) and a JSON body naming the run.
fn created(run: usize, body: &str) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/payments/{run}")),
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (HeaderName::from_static("x-run"), run.to_string()),
        ],
        format!(r#"{{"run":{run},"request":{body:?}}}"#),
    )
        .into_response()
}

async fn payments(State(app): State<App>, body: String) -> Response {
    created(app.run(), &body)
}

async fn slow(State(app): State<App>, body: String) -> Response {
    let mut gate = app.gate.subscribe();
    let _ = gate.wait_for(|open| *open).await;
    created(app.run(), &body)
}

/// 500 the first time, 201 after.
async fn flaky(State(app): State<App>) -> Response {
    match app.run() {
        1 => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        n => created(n, ""),
    }
}

/// 429 the first time, 201 after.
async fn limited(State(app): State<App>) -> Response {
    match app.run() {
        1 => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        n => created(n, ""),
    }
}

/// Panics the first time, 201 after.
async fn panics(State(app): State<App>) -> Response {
    match app.run() {
        1 => panic!("the handler panics (on purpose)"),
        n => created(n, ""),
    }
}

/// 4 KiB of body: over a 1 KiB limit.
async fn big(State(app): State<App>) -> Response {
    let run = app.run();
    (StatusCode::CREATED, vec![b'a' + (run % 26) as u8; 4096]).into_response()
}

fn routes(app: &App) -> Router {
    Router::new()
        .route("/payments", routing::post(payments).get(payments))
        .route("/orders", routing::post(payments))
        .route("/slow", routing::post(slow))
        .route("/flaky", routing::post(flaky))
        .route("/limited", routing::post(limited))
        .route("/panics", routing::post(panics))
        .route("/big", routing::post(big))
        .with_state(app.clone())
}

/// Serves `router` on a loopback port; the base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

// ---- the client side ------------------------------------------------------------------

/// What a test looks at in a response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    /// Asserts an RFC 9457 problem with this status; its JSON.
    fn problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let json: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        assert_eq!(json["status"], status, "{json}");
        for field in ["type", "title", "detail"] {
            assert!(json[field].is_string(), "no {field}: {json}");
        }
        json
    }
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &[u8])],
    body: impl Into<reqwest::Body>,
) -> Result<Reply, reqwest::Error> {
    let mut request = client.request(method, url).body(body);
    for (name, value) in headers {
        request = request.header(
            *name,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = request.send().await?;
    Ok(Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await?,
    })
}

/// POST `body` to `url` with `Idempotency-Key: key`.
async fn post_key(url: &str, key: &str, body: &str) -> Reply {
    let client = reqwest::Client::new();
    let headers: &[(&str, &[u8])] = &[("idempotency-key", key.as_bytes())];
    send(
        &client,
        reqwest::Method::POST,
        url,
        headers,
        body.to_owned(),
    )
    .await
    .unwrap()
}

/// POST without a key.
async fn post_plain(url: &str, body: &str) -> Reply {
    let client = reqwest::Client::new();
    send(&client, reqwest::Method::POST, url, &[], body.to_owned())
        .await
        .unwrap()
}

// ---- every store ----------------------------------------------------------------------

/// Runs `scenario` on a fresh store of `backend` (skipped, with a note, when the backend is
/// not configured), and drops its tables after.
async fn on<F, Fut>(backend: Option<Backend>, scenario: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(backend) = backend else { return };
    let table = unique("idem_http");
    let db = backend.connect(&table).await;
    scenario(db.store.clone()).await;
    db.drop_tables(&table).await;
}

macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$scenario(Arc::new(MemoryStore::new())).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                on(Some(Backend::sqlite()), super::$scenario).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                on(Backend::postgres(), super::$scenario).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                on(Backend::mysql(), super::$scenario).await
            }
        }
    )*};
}

on_every_store!(
    a_retry_replays_status_body_and_kept_headers,
    concurrent_duplicates_run_once_the_others_get_409,
    concurrent_duplicates_wait_and_replay,
    the_key_with_another_payload_is_422,
    two_tenants_with_one_key_run_twice,
    a_500_is_not_recorded_and_the_retry_runs,
    a_panicking_handler_releases_the_key,
);

async fn a_retry_replays_status_body_and_kept_headers(store: Arc<dyn Store>) {
    let app = App::new();
    let url = serve(routes(&app).layer(IdempotencyLayer::new(store).unscoped())).await;
    let first = post_key(&format!("{url}/payments"), "txn_001", "{\"cents\":500}").await;
    assert_eq!(first.status, 201, "{first:?}");
    assert!(!first.replayed(), "{first:?}");
    assert_eq!(
        first.header("x-run"),
        Some("1"),
        "the first response keeps all its headers"
    );

    // The sf-string form `"txn_001"` is the same key as the bare token.
    for key in ["txn_001", "\"txn_001\""] {
        let retry = post_key(&format!("{url}/payments"), key, "{\"cents\":500}").await;
        assert_eq!(retry.status, 201, "{retry:?}");
        assert!(retry.replayed(), "{retry:?}");
        assert_eq!(retry.body, first.body);
        assert_eq!(retry.header("location"), Some("/payments/1"));
        assert_eq!(retry.header("content-type"), Some("application/json"));
        assert_eq!(retry.header("x-run"), None, "x-run is not a kept header");
    }
    assert_eq!(app.runs(), 1);
}

/// Sends 64 duplicates at once to the gated handler; opens the gate once 63 have answered
/// (or after 20 s, so a layer that lets several run fails instead of hanging).
async fn race(url: &str, app: &App, open_after: Option<Duration>) -> Vec<Reply> {
    let mut tasks = JoinSet::new();
    for _ in 0..64 {
        let url = format!("{url}/slow");
        tasks.spawn(async move { post_key(&url, "race-1", "same body").await });
    }
    let mut replies = Vec::new();
    match open_after {
        Some(after) => {
            tokio::time::sleep(after).await;
            app.open_gate();
        }
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(20), async {
                while replies.len() < 63 {
                    replies.push(tasks.join_next().await.unwrap().unwrap());
                }
            })
            .await;
            app.open_gate();
        }
    }
    while let Some(reply) = tasks.join_next().await {
        replies.push(reply.unwrap());
    }
    replies
}

async fn concurrent_duplicates_run_once_the_others_get_409(store: Arc<dyn Store>) {
    let app = App::new();
    let url = serve(routes(&app).layer(IdempotencyLayer::new(store).unscoped())).await;
    let replies = race(&url, &app, None).await;
    assert_eq!(app.runs(), 1, "the handler ran more than once");
    let created: Vec<_> = replies.iter().filter(|r| r.status == 201).collect();
    assert_eq!(created.len(), 1, "{replies:#?}");
    for conflict in replies.iter().filter(|r| r.status != 201) {
        let json = conflict.problem(409);
        assert_eq!(
            json["title"],
            "A request is outstanding for this Idempotency-Key"
        );
        let retry_after: u64 = conflict.header("retry-after").unwrap().parse().unwrap();
        // From the owner's remaining lease (30 s by default, renewed while it runs), rounded
        // up: not a made-up default.
        assert!((20..=30).contains(&retry_after), "{retry_after}");
    }
}

async fn concurrent_duplicates_wait_and_replay(store: Arc<dyn Store>) {
    let app = App::new();
    let layer = IdempotencyLayer::new(store)
        .unscoped()
        .wait(Duration::from_secs(20));
    let url = serve(routes(&app).layer(layer)).await;
    let replies = race(&url, &app, Some(Duration::from_millis(500))).await;
    assert_eq!(app.runs(), 1, "the handler ran more than once");
    assert!(replies.iter().all(|r| r.status == 201), "{replies:#?}");
    assert!(replies.iter().all(|r| r.body == replies[0].body));
    assert_eq!(replies.iter().filter(|r| r.replayed()).count(), 63);
}

async fn the_key_with_another_payload_is_422(store: Arc<dyn Store>) {
    let app = App::new();
    let url = serve(routes(&app).layer(IdempotencyLayer::new(store).unscoped())).await;
    assert_eq!(
        post_key(&format!("{url}/payments"), "k-422", "A")
            .await
            .status,
        201
    );
    for (path, body) in [
        ("/payments", "B"),     // another body
        ("/orders", "A"),       // another path
        ("/payments?x=1", "A"), // another query
    ] {
        let reply = post_key(&format!("{url}{path}"), "k-422", body).await;
        let json = reply.problem(422);
        assert_eq!(json["title"], "Idempotency-Key is already used", "{path}");
    }
    assert_eq!(app.runs(), 1);
    // The first payload still replays.
    assert!(
        post_key(&format!("{url}/payments"), "k-422", "A")
            .await
            .replayed()
    );
}

async fn two_tenants_with_one_key_run_twice(store: Arc<dyn Store>) {
    let app = App::new();
    let layer = IdempotencyLayer::new(store).scope(|parts| {
        let tenant = parts.headers.get("x-tenant")?;
        Some(tenant.to_str().ok()?.to_owned())
    });
    let url = format!("{}/payments", serve(routes(&app).layer(layer)).await);
    let client = reqwest::Client::new();
    let as_tenant = |tenant: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let headers: &[(&str, &[u8])] = &[
                ("idempotency-key", b"shared-key"),
                ("x-tenant", tenant.as_bytes()),
            ];
            send(&client, reqwest::Method::POST, &url, headers, "same")
                .await
                .unwrap()
        }
    };
    let a = as_tenant("acme").await;
    let b = as_tenant("globex").await;
    assert_eq!((a.status, b.status), (201, 201));
    assert!(!b.replayed(), "one tenant got another's response: {b:?}");
    assert_ne!(a.body, b.body);
    let a_again = as_tenant("acme").await;
    assert!(a_again.replayed());
    assert_eq!(a_again.body, a.body);
    assert_eq!(app.runs(), 2);

    // A key without a tenant (or with an empty one) is refused, not run.
    let reply = post_key(&url, "shared-key", "same").await;
    assert_eq!(reply.problem(400)["title"], "Idempotency scope is missing");
    let reply = as_tenant("").await;
    assert_eq!(reply.problem(400)["title"], "Idempotency scope is missing");
    assert_eq!(app.runs(), 2);
}

async fn a_500_is_not_recorded_and_the_retry_runs(store: Arc<dyn Store>) {
    let app = App::new();
    let url = serve(routes(&app).layer(IdempotencyLayer::new(store).unscoped())).await;
    let url = format!("{url}/flaky");
    let first = post_key(&url, "k-500", "").await;
    assert_eq!((first.status, first.body.as_str()), (500, "boom"));
    let retry = post_key(&url, "k-500", "").await;
    assert_eq!(retry.status, 201);
    assert!(!retry.replayed());
    let again = post_key(&url, "k-500", "").await;
    assert!(again.replayed());
    assert_eq!(again.body, retry.body);
    assert_eq!(app.runs(), 2);
}

async fn a_panicking_handler_releases_the_key(store: Arc<dyn Store>) {
    let app = App::new();
    let url = serve(routes(&app).layer(IdempotencyLayer::new(store).unscoped())).await;
    let url = format!("{url}/panics");
    let client = reqwest::Client::new();
    let headers: &[(&str, &[u8])] = &[("idempotency-key", b"k-panic")];
    // The connection is dropped under the panic (axum::serve catches none).
    let first = send(&client, reqwest::Method::POST, &url, headers, "").await;
    assert!(
        first.as_ref().map_or(true, |r| r.status == 500),
        "{first:?}"
    );
    // The next request runs at once: the claim was released, not left to its lease (a
    // leftover claim would answer 409).
    let retry = post_key(&url, "k-panic", "").await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert_eq!(app.runs(), 2);
}

// ---- the memory store: what does not depend on the store ------------------------------

fn unscoped(app: &App) -> Router {
    routes(app).layer(IdempotencyLayer::new(MemoryStore::new()).unscoped())
}

#[tokio::test]
async fn unusable_keys_are_400_problems() {
    let app = App::new();
    let url = format!("{}/payments", serve(unscoped(&app)).await);
    let client = reqwest::Client::new();
    let long = "k".repeat(256);
    let cases: [(&str, &[&[u8]]); 9] = [
        ("empty sf-string", &[b"\"\""]),
        ("empty", &[b""]),
        ("over 255 characters", &[long.as_bytes()]),
        ("unterminated string", &[b"\"abc"]),
        ("space in a bare key", &[b"a b"]),
        ("quote in a bare key", &[b"ab\"c"]),
        ("non-ASCII", &[b"\"\xc3\xa9\""]),
        ("two items", &[b"\"a\", \"b\""]),
        ("repeated header", &[b"a", b"b"]),
    ];
    for (what, values) in cases {
        let headers: Vec<(&str, &[u8])> = values.iter().map(|v| ("idempotency-key", *v)).collect();
        let reply = send(&client, reqwest::Method::POST, &url, &headers, "x")
            .await
            .unwrap();
        let json = reply.problem(400);
        assert_eq!(
            json["title"], "Idempotency-Key is invalid",
            "{what}: {json}"
        );
    }
    // 255 characters is still a key.
    let max = "k".repeat(255);
    assert_eq!(post_key(&url, &max, "x").await.status, 201);
    assert_eq!(app.runs(), 1);
}

#[tokio::test]
async fn a_request_without_the_header_passes_through() {
    let app = App::new();
    let url = format!("{}/payments", serve(unscoped(&app)).await);
    for _ in 0..2 {
        let reply = post_plain(&url, "x").await;
        assert_eq!(reply.status, 201);
        assert!(!reply.replayed());
    }
    assert_eq!(app.runs(), 2);
}

#[tokio::test]
async fn require_key_refuses_a_request_without_the_header() {
    let app = App::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .unscoped()
        .require_key();
    let url = format!("{}/payments", serve(routes(&app).layer(layer)).await);
    let json = post_plain(&url, "x").await.problem(400);
    assert_eq!(json["title"], "Idempotency-Key is missing");
    assert_eq!(app.runs(), 0);
    assert_eq!(post_key(&url, "k", "x").await.status, 201);
}

#[tokio::test]
async fn get_passes_through_untouched() {
    let app = App::new();
    let url = format!("{}/payments", serve(unscoped(&app)).await);
    let client = reqwest::Client::new();
    let headers: &[(&str, &[u8])] = &[("idempotency-key", b"k-get")];
    for _ in 0..2 {
        let reply = send(&client, reqwest::Method::GET, &url, headers, "")
            .await
            .unwrap();
        assert_eq!(reply.status, 201);
        assert!(!reply.replayed());
        assert!(reply.header("x-run").is_some(), "the handler answered");
    }
    assert_eq!(app.runs(), 2);
}

#[tokio::test]
async fn the_methods_are_configurable() {
    let app = App::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .unscoped()
        .methods([axum::http::Method::GET]);
    let url = format!("{}/payments", serve(routes(&app).layer(layer)).await);
    let client = reqwest::Client::new();
    let headers: &[(&str, &[u8])] = &[("idempotency-key", b"k-get")];
    for _ in 0..2 {
        send(&client, reqwest::Method::GET, &url, headers, "")
            .await
            .unwrap();
    }
    assert_eq!(app.runs(), 1, "GET is now idempotent");
    post_key(&url, "k-post", "").await;
    post_key(&url, "k-post", "").await;
    assert_eq!(app.runs(), 3, "POST is no longer");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = App::new();
    let url = format!("{}/payments", serve(unscoped(&app)).await);
    let over = "x".repeat(1024 * 1024 + 1);
    let json = post_key(&url, "k-big", &over).await.problem(413);
    assert_eq!(json["title"], "Request body is too large");
    assert_eq!(app.runs(), 0);
    // 1 MiB exactly is within the default limit.
    let at_limit = "x".repeat(1024 * 1024);
    assert_eq!(post_key(&url, "k-big", &at_limit).await.status, 201);
    assert_eq!(app.runs(), 1);
}

#[tokio::test]
async fn a_response_over_the_limit_is_sent_but_not_recorded() {
    let app = App::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .unscoped()
        .body_limit(1024);
    let url = format!("{}/big", serve(routes(&app).layer(layer)).await);
    let first = post_key(&url, "k-big-response", "").await;
    let retry = post_key(&url, "k-big-response", "").await;
    for reply in [&first, &retry] {
        assert_eq!(reply.status, 201);
        assert_eq!(reply.body.len(), 4096, "the whole body is sent");
        assert!(!reply.replayed());
    }
    assert_ne!(first.body, retry.body, "the retry ran again");
    assert_eq!(app.runs(), 2);
}

#[tokio::test]
async fn a_429_is_not_recorded() {
    let app = App::new();
    let url = format!("{}/limited", serve(unscoped(&app)).await);
    assert_eq!(post_key(&url, "k-429", "").await.status, 429);
    assert_eq!(post_key(&url, "k-429", "").await.status, 201);
    assert!(post_key(&url, "k-429", "").await.replayed());
    assert_eq!(app.runs(), 2);
}

#[tokio::test]
async fn the_header_name_is_configurable() {
    let app = App::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .unscoped()
        .header(HeaderName::from_static("paypal-request-id"));
    let url = format!("{}/payments", serve(routes(&app).layer(layer)).await);
    let client = reqwest::Client::new();
    let headers: &[(&str, &[u8])] = &[("PayPal-Request-Id", b"pp-1")];
    for _ in 0..2 {
        send(&client, reqwest::Method::POST, &url, headers, "x")
            .await
            .unwrap();
    }
    assert_eq!(app.runs(), 1);
    // `Idempotency-Key` means nothing to this layer.
    post_key(&url, "pp-2", "x").await;
    post_key(&url, "pp-2", "x").await;
    assert_eq!(app.runs(), 3);
    let headers: &[(&str, &[u8])] = &[("PayPal-Request-Id", b"")];
    let reply = send(&client, reqwest::Method::POST, &url, headers, "x")
        .await
        .unwrap();
    assert_eq!(reply.problem(400)["title"], "Paypal-Request-Id is invalid");
}

/// A store whose backend is down.
struct DownStore;

fn down(op: &'static str) -> StoreError {
    StoreError::backend(op, "connection to db-secret-host.internal:5432 refused")
}

#[async_trait::async_trait]
impl Store for DownStore {
    async fn claim(
        &self,
        _: &Key,
        _: &idem::Fingerprint,
        _: Duration,
    ) -> Result<idem::store::Claim, StoreError> {
        Err(down("claim"))
    }
    async fn renew(&self, _: &Key, _: idem::store::Token, _: Duration) -> Result<(), StoreError> {
        Err(down("renew"))
    }
    async fn complete(
        &self,
        _: &Key,
        _: idem::store::Token,
        _: idem::store::Output,
        _: Duration,
    ) -> Result<(), StoreError> {
        Err(down("complete"))
    }
    async fn release(&self, _: &Key, _: idem::store::Token) -> Result<(), StoreError> {
        Err(down("release"))
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Err(down("purge"))
    }
}

#[tokio::test]
async fn a_store_failure_is_503_without_detail() {
    let app = App::new();
    let layer = IdempotencyLayer::new(DownStore).unscoped();
    let url = format!("{}/payments", serve(routes(&app).layer(layer)).await);
    let reply = post_key(&url, "k-down", "x").await;
    reply.problem(503);
    assert!(!reply.body.contains("db-secret-host"), "{}", reply.body);
    assert_eq!(app.runs(), 0, "nothing runs unchecked");
}

// ---- the extractor and `problem` -------------------------------------------------------

#[derive(Clone)]
struct Charges {
    store: Arc<MemoryStore>,
    runs: Arc<AtomicUsize>,
}

#[idem::idempotent(key = key, store = charges.store, skip(charges))]
async fn charge(charges: &Charges, key: IdempotencyKey, cents: u64) -> Result<u64, idem::Error> {
    charges.runs.fetch_add(1, Ordering::SeqCst);
    Ok(cents)
}

async fn charge_handler(
    State(charges): State<Charges>,
    key: IdempotencyKey,
    cents: String,
) -> Response {
    let Ok(cents) = cents.parse() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match charge(&charges, key, cents).await {
        Ok(charged) => format!("charged {charged}").into_response(),
        Err(e) => problem(&e),
    }
}

async fn optional_key(key: Option<IdempotencyKey>) -> String {
    match key {
        Some(key) => format!("key {key}"),
        None => "no key".to_owned(),
    }
}

#[tokio::test]
async fn the_extractor_feeds_idempotent_functions() {
    let charges = Charges {
        store: Arc::new(MemoryStore::new()),
        runs: Arc::default(),
    };
    let router = Router::new()
        .route("/charges", routing::post(charge_handler))
        .route("/optional", routing::post(optional_key))
        .with_state(charges.clone());
    let url = serve(router).await;
    let charges_url = format!("{url}/charges");
    for key in ["c-1", "\"c-1\""] {
        let reply = post_key(&charges_url, key, "500").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "charged 500"));
    }
    assert_eq!(charges.runs.load(Ordering::SeqCst), 1);
    let json = post_key(&charges_url, "c-1", "700").await.problem(422);
    assert_eq!(json["title"], "Idempotency-Key is already used");
    let json = post_plain(&charges_url, "500").await.problem(400);
    assert_eq!(json["title"], "Idempotency-Key is missing");
    post_key(&charges_url, "a b", "500").await.problem(400);

    let optional = format!("{url}/optional");
    assert_eq!(post_plain(&optional, "").await.body, "no key");
    assert_eq!(post_key(&optional, "\"k\"", "").await.body, "key k");
    post_key(&optional, "\"k", "").await.problem(400);
}

/// A memory store that takes records of at most 64 bytes.
struct TinyStore(MemoryStore);

#[async_trait::async_trait]
impl Store for TinyStore {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &idem::Fingerprint,
        lease: Duration,
    ) -> Result<idem::store::Claim, StoreError> {
        self.0.claim(key, fingerprint, lease).await
    }
    async fn renew(
        &self,
        key: &Key,
        token: idem::store::Token,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.0.renew(key, token, lease).await
    }
    async fn complete(
        &self,
        key: &Key,
        token: idem::store::Token,
        output: idem::store::Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.0.complete(key, token, output, ttl).await
    }
    async fn release(&self, key: &Key, token: idem::store::Token) -> Result<(), StoreError> {
        self.0.release(key, token).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.0.purge_expired().await
    }
    fn max_output_len(&self) -> usize {
        64
    }
}

#[tokio::test]
async fn a_response_the_store_cannot_hold_is_sent_but_not_recorded() {
    let app = App::new();
    let layer = IdempotencyLayer::new(TinyStore(MemoryStore::new())).unscoped();
    let url = format!("{}/payments", serve(routes(&app).layer(layer)).await);
    let first = post_key(&url, "k-tiny", "a request body longer than the store takes").await;
    assert_eq!(first.status, 201, "the handler ran: its response is sent");
    assert_eq!(first.header("x-run"), Some("1"));
    let retry = post_key(&url, "k-tiny", "a request body longer than the store takes").await;
    assert_eq!((retry.status, retry.replayed()), (201, false));
    assert_eq!(app.runs(), 2, "the key was released");
}
