//! The client helper against a real server over loopback TCP: an axum app whose handler is
//! an ordinary `#[idempotent(key = key, …)]` function keyed by the `Idempotency-Key` header,
//! counting the charges it makes. The server fails the first attempts in each way a network
//! or a server can (the connection dropped after the charge ran, 503, 429 + `Retry-After`,
//! 409, an answer too slow to wait for), and records the key header of every attempt.
#![cfg(feature = "client")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use idem::{MemoryStore, idempotent};
// Through the facade, as users name it (`idem` with the feature `reqwest`).
use idem::http::client::{IdempotencyRetry, RequestKey, RetryError, RetryReport};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// The server.

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Charge {
    amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Receipt {
    charge_id: u32,
    amount_cents: u64,
}

#[derive(Debug)]
enum BankError {
    Idem(idem::Error),
}

impl From<idem::Error> for BankError {
    fn from(e: idem::Error) -> Self {
        BankError::Idem(e)
    }
}

struct Bank {
    store: MemoryStore,
    charges: AtomicU32,
    /// How long the card network takes.
    charge_time: Duration,
}

impl Bank {
    /// An ordinary idempotent function, keyed by the request's key header.
    #[idempotent(key = key, store = self.store)]
    async fn charge(&self, key: String, req: Charge) -> Result<Receipt, BankError> {
        let charge_id = self.charges.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.charge_time).await;
        Ok(Receipt {
            charge_id,
            amount_cents: req.amount_cents,
        })
    }
}

/// What the server does to one attempt (by its arrival order); attempts past the plan are
/// served normally.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Serve normally.
    None,
    /// The charge runs, then the connection is dropped before any response: the charge
    /// happened but the client sees a transport error.
    DropAfterCharge,
    /// Answer this status before the charge runs.
    Status(u16),
    /// 429 with `Retry-After: <seconds>`, before the charge.
    TooMany(u64),
    /// 429 with `Retry-After` as an HTTP-date this far in the future, before the charge.
    TooManyUntil(Duration),
    /// The charge runs, the answer comes this late.
    SlowAfterCharge(Duration),
    /// Never answer.
    Hang,
}

/// The panic payload that drops a connection (silenced by the panic hook).
struct DropConnection;

struct Server {
    bank: Arc<Bank>,
    plan: Vec<Fault>,
    header: HeaderName,
    /// The key header of every attempt, in arrival order.
    seen: Mutex<Vec<Option<String>>>,
    /// The status of every answer the server gave (dropped connections give none).
    answers: Mutex<Vec<u16>>,
}

impl Server {
    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }
    fn answers(&self) -> Vec<u16> {
        self.answers.lock().unwrap().clone()
    }
    fn charges(&self) -> u32 {
        self.bank.charges.load(Ordering::SeqCst)
    }
    fn answer(&self, response: Response) -> Response {
        self.answers
            .lock()
            .unwrap()
            .push(response.status().as_u16());
        response
    }
}

async fn handle(
    State(server): State<Arc<Server>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = headers
        .get(&server.header)
        .map(|v| v.to_str().expect("ASCII key").to_owned());
    let attempt = {
        let mut seen = server.seen.lock().unwrap();
        seen.push(key.clone());
        seen.len() - 1
    };
    let fault = server.plan.get(attempt).copied().unwrap_or(Fault::None);
    match fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            return server.answer((status, "injected").into_response());
        }
        Fault::TooMany(seconds) => {
            return server.answer(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, seconds.to_string())],
                )
                    .into_response(),
            );
        }
        Fault::TooManyUntil(later) => {
            let date = httpdate::fmt_http_date(SystemTime::now() + later);
            return server.answer(
                (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, date)]).into_response(),
            );
        }
        Fault::Hang => std::future::pending::<()>().await,
        Fault::None | Fault::DropAfterCharge | Fault::SlowAfterCharge(_) => {}
    }
    if method == Method::GET {
        return server.answer("balance: 0".into_response());
    }
    let Some(key) = key else {
        return server.answer((StatusCode::BAD_REQUEST, "no key").into_response());
    };
    let charge: Charge = serde_json::from_slice(&body).expect("a charge");
    // The charge runs to its end even if the client gives up on this attempt, as a real
    // payment would.
    let bank = server.bank.clone();
    let result = tokio::spawn(async move { bank.charge(key, charge).await })
        .await
        .unwrap();
    match fault {
        // Unwinds the connection's task: the socket closes without a response.
        Fault::DropAfterCharge => std::panic::panic_any(DropConnection),
        Fault::SlowAfterCharge(late) => tokio::time::sleep(late).await,
        _ => {}
    }
    server.answer(match result {
        Ok(receipt) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&receipt).unwrap(),
        )
            .into_response(),
        // The IETF draft's answer to a duplicate while the first is in flight.
        Err(BankError::Idem(idem::Error::InProgress)) => StatusCode::CONFLICT.into_response(),
        Err(BankError::Idem(idem::Error::PayloadMismatch)) => {
            StatusCode::UNPROCESSABLE_ENTITY.into_response()
        }
        Err(BankError::Idem(e)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    })
}

fn silence_dropped_connections() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<DropConnection>().is_none() {
                default(info);
            }
        }));
    });
}

/// Starts a server on a loopback port; returns its base URL and its state.
async fn serve(plan: Vec<Fault>) -> (String, Arc<Server>) {
    serve_with(plan, Duration::ZERO, "idempotency-key").await
}

async fn serve_with(
    plan: Vec<Fault>,
    charge_time: Duration,
    header: &'static str,
) -> (String, Arc<Server>) {
    silence_dropped_connections();
    let server = Arc::new(Server {
        bank: Arc::new(Bank {
            store: MemoryStore::new(),
            charges: AtomicU32::new(0),
            charge_time,
        }),
        plan,
        header: HeaderName::from_static(header),
        seen: Mutex::new(Vec::new()),
        answers: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/payments", post(handle).patch(handle).put(handle))
        .route("/balance", get(handle))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, server)
}

// ---------------------------------------------------------------------------------------------
// The client.

/// The middleware with short waits, so the tests run fast.
fn fast() -> IdempotencyRetry {
    IdempotencyRetry::new().backoff(Duration::from_millis(1), Duration::from_millis(10))
}

fn client(retry: IdempotencyRetry) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(retry)
        .build()
}

const CHARGE: &str = r#"{"amount_cents":1999}"#;

async fn pay(
    client: &ClientWithMiddleware,
    url: &str,
) -> reqwest_middleware::Result<reqwest::Response> {
    client
        .post(format!("{url}/payments"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(CHARGE)
        .send()
        .await
}

fn report(response: &reqwest::Response) -> RetryReport {
    response
        .extensions()
        .get::<RetryReport>()
        .expect("a RetryReport on the response")
        .clone()
}

/// Every attempt carried a key, the same one.
fn one_key(seen: &[Option<String>]) -> String {
    let first = seen[0].clone().expect("the first attempt carried a key");
    for (i, key) in seen.iter().enumerate() {
        assert_eq!(
            key.as_deref(),
            Some(first.as_str()),
            "attempt {i} carried another key"
        );
    }
    first
}

async fn receipt(response: reqwest::Response) -> Receipt {
    assert_eq!(response.status(), 200);
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// A retried charge is one charge.

#[tokio::test]
async fn dropped_connections_after_the_charge_are_one_charge() {
    let (url, server) = serve(vec![Fault::DropAfterCharge, Fault::DropAfterCharge]).await;
    let response = pay(&client(fast()), &url).await.unwrap();
    let report = report(&response);
    assert_eq!(
        receipt(response).await,
        Receipt {
            charge_id: 1,
            amount_cents: 1999
        }
    );
    assert_eq!(
        server.charges(),
        1,
        "the retries must replay, not charge again"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    let key = one_key(&seen);
    // A UUID v7 sent as an sf-string: "xxxxxxxx-xxxx-7xxx-…".
    assert_eq!(key.len(), 38, "{key}");
    assert!(key.starts_with('"') && key.ends_with('"'), "{key}");
    assert_eq!(&key[15..16], "7", "not a UUID v7: {key}");
    assert_eq!(report.key.as_deref(), Some(key.as_str()));
    assert_eq!(report.attempts, 3);
    // Two connections were dropped: the only answer is the last one (a replay).
    assert_eq!(server.answers(), vec![200]);
}

/// The control: the same faults, retried by hand with a fresh key each time, charge twice.
/// (So the server really charges on the dropped attempt, and "one charge" above is the key's
/// doing.)
#[tokio::test]
async fn control_a_fresh_key_per_attempt_charges_again() {
    let (url, server) = serve(vec![Fault::DropAfterCharge]).await;
    let plain = reqwest::Client::new();
    for key in ["k1", "k2"] {
        let _ = plain
            .post(format!("{url}/payments"))
            .header("idempotency-key", key)
            .body(CHARGE)
            .send()
            .await;
    }
    assert_eq!(server.charges(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_key() {
    let (url, server) = serve(vec![
        Fault::Status(503),
        Fault::Status(500),
        Fault::Status(502),
    ])
    .await;
    let response = pay(&client(fast()), &url).await.unwrap();
    assert_eq!(report(&response).attempts, 4);
    assert_eq!(receipt(response).await.charge_id, 1);
    assert_eq!(server.charges(), 1);
    one_key(&server.seen());
    assert_eq!(server.answers(), vec![503, 500, 502, 200]);
}

#[tokio::test]
async fn conflicts_are_retried_with_the_same_key() {
    let (url, server) = serve(vec![Fault::Status(409), Fault::Status(409)]).await;
    let response = pay(&client(fast()), &url).await.unwrap();
    assert_eq!(report(&response).attempts, 3);
    assert_eq!(receipt(response).await.charge_id, 1);
    assert_eq!(server.charges(), 1);
    one_key(&server.seen());
}

/// The real in-progress case: the first attempt's charge is slow, the client gives up on it
/// and retries; the retry finds the charge in progress (409 from the idempotent function),
/// retries again, and gets the replay once the charge completes.
#[tokio::test]
async fn a_retry_during_the_charge_gets_409_then_the_replay() {
    let (url, server) = serve_with(vec![], Duration::from_millis(600), "idempotency-key").await;
    let retry = IdempotencyRetry::new()
        .attempt_timeout(Duration::from_millis(200))
        .backoff(Duration::from_millis(50), Duration::from_millis(100))
        .max_attempts(30);
    let response = pay(&client(retry), &url).await.unwrap();
    assert_eq!(receipt(response).await.charge_id, 1);
    assert_eq!(server.charges(), 1);
    one_key(&server.seen());
    let answers = server.answers();
    assert!(
        answers.contains(&409),
        "no attempt saw the charge in progress: {answers:?}"
    );
    // The first attempt's handler was dropped with its connection (its charge ran on); the
    // last answer is the replay.
    assert_eq!(answers.last(), Some(&200), "{answers:?}");
}

#[tokio::test]
async fn a_timed_out_attempt_is_retried_with_the_same_key() {
    let (url, server) = serve(vec![Fault::SlowAfterCharge(Duration::from_secs(3))]).await;
    let started = Instant::now();
    let retry = fast().attempt_timeout(Duration::from_millis(300));
    let response = pay(&client(retry), &url).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report(&response).attempts, 2);
    assert_eq!(receipt(response).await.charge_id, 1);
    assert_eq!(server.charges(), 1);
    assert_eq!(server.seen().len(), 2);
    one_key(&server.seen());
}

/// reqwest's own timeout (a transport error) is retried too.
#[tokio::test]
async fn a_reqwest_timeout_is_retried() {
    let (url, server) = serve(vec![Fault::SlowAfterCharge(Duration::from_secs(3))]).await;
    let client = ClientBuilder::new(
        reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .with(fast())
    .build();
    let response = pay(&client, &url).await.unwrap();
    assert_eq!(report(&response).attempts, 2);
    assert_eq!(server.charges(), 1);
    one_key(&server.seen());
}

// ---------------------------------------------------------------------------------------------
// Retry-After.

#[tokio::test]
async fn retry_after_seconds_are_waited() {
    let (url, server) = serve(vec![Fault::TooMany(1)]).await;
    let started = Instant::now();
    let response = pay(&client(fast()), &url).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "retried after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "retried after {elapsed:?}"
    );
    assert_eq!(report(&response).attempts, 2);
    assert_eq!(server.charges(), 1);
    one_key(&server.seen());
}

#[tokio::test]
async fn retry_after_dates_are_waited() {
    // An HTTP-date has whole seconds: 2 s from now is between 1 and 2 s away.
    let (url, server) = serve(vec![Fault::TooManyUntil(Duration::from_secs(2))]).await;
    let started = Instant::now();
    let response = pay(&client(fast()), &url).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "retried after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "retried after {elapsed:?}"
    );
    assert_eq!(report(&response).attempts, 2);
    assert_eq!(server.charges(), 1);
}

#[tokio::test]
async fn retry_after_can_be_ignored() {
    let (url, server) = serve(vec![Fault::TooMany(5)]).await;
    let started = Instant::now();
    let response = pay(&client(fast().retry_after(false)), &url).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(report(&response).attempts, 2);
    assert_eq!(server.charges(), 1);
}

#[tokio::test]
async fn a_retry_after_past_the_budget_returns_the_answer_at_once() {
    let (url, server) = serve(vec![Fault::TooMany(60)]).await;
    let started = Instant::now();
    let retry = fast().max_total_time(Duration::from_secs(5));
    let response = tokio::time::timeout(Duration::from_secs(3), pay(&client(retry), &url))
        .await
        .expect("waited for a Retry-After past the budget")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(response.status(), 429);
    assert_eq!(report(&response).attempts, 1);
    assert_eq!(server.seen().len(), 1);
    assert_eq!(server.charges(), 0);
}

#[tokio::test]
async fn an_absurd_retry_after_ends_the_retries_without_overflow() {
    let (url, server) = serve(vec![Fault::TooMany(u64::MAX)]).await;
    let retry = fast().max_total_time(Duration::MAX);
    let response = tokio::time::timeout(Duration::from_secs(3), pay(&client(retry), &url))
        .await
        .expect("waited for an absurd Retry-After")
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(report(&response).attempts, 1);
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn an_unbounded_budget_still_retries() {
    let (url, server) = serve(vec![Fault::Status(503)]).await;
    let response = pay(&client(fast().max_total_time(Duration::MAX)), &url)
        .await
        .unwrap();
    assert_eq!(report(&response).attempts, 2);
    assert_eq!(server.charges(), 1);
}

// ---------------------------------------------------------------------------------------------
// What is never retried.

#[tokio::test]
async fn client_errors_are_not_retried() {
    for code in [400, 401, 403, 404, 408, 413, 422] {
        let (url, server) = serve(vec![Fault::Status(code)]).await;
        let response = pay(&client(fast()), &url).await.unwrap();
        assert_eq!(response.status(), code);
        assert_eq!(report(&response).attempts, 1, "{code}");
        assert_eq!(server.seen().len(), 1, "{code} was retried");
        assert_eq!(server.charges(), 0);
    }
}

#[tokio::test]
async fn get_gets_no_key_and_no_retry() {
    let (url, server) = serve(vec![Fault::Status(503)]).await;
    let response = client(fast())
        .get(format!("{url}/balance"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.extensions().get::<RetryReport>().is_none());
    assert_eq!(server.seen(), vec![None]);
}

#[tokio::test]
async fn put_is_not_handled_by_default() {
    let (url, server) = serve(vec![Fault::Status(503)]).await;
    let response = client(fast())
        .put(format!("{url}/payments"))
        .body(CHARGE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(server.seen(), vec![None]);
}

#[tokio::test]
async fn patch_is_handled_by_default() {
    let (url, server) = serve(vec![Fault::Status(503)]).await;
    let response = client(fast())
        .patch(format!("{url}/payments"))
        .body(CHARGE)
        .send()
        .await
        .unwrap();
    assert_eq!(report(&response).attempts, 2);
    assert_eq!(server.charges(), 1);
    one_key(&server.seen());
}

#[tokio::test]
async fn configured_methods_get_a_key_and_retries() {
    let (url, server) = serve(vec![Fault::Status(503)]).await;
    let response = client(fast().methods([Method::GET]))
        .get(format!("{url}/balance"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(report(&response).attempts, 2);
    assert_eq!(server.seen().len(), 2);
    one_key(&server.seen());
}

/// A streaming body cannot be cloned: the request is sent once (with its key), not retried.
#[tokio::test]
async fn a_streaming_body_is_sent_once() {
    let (url, server) = serve(vec![Fault::Status(503)]).await;
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok(CHARGE)];
    let response = client(fast())
        .post(format!("{url}/payments"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(report(&response).attempts, 1);
    assert_eq!(server.seen().len(), 1);
    assert!(
        server.seen()[0].is_some(),
        "the key is sent even without retries"
    );
}

// ---------------------------------------------------------------------------------------------
// Bounds.

#[tokio::test]
async fn attempts_are_bounded() {
    let (url, server) = serve(vec![Fault::Status(503); 10]).await;
    let response = pay(&client(fast().max_attempts(3)), &url).await.unwrap();
    assert_eq!(response.status(), 503, "the last answer is returned");
    assert_eq!(report(&response).attempts, 3);
    assert_eq!(server.seen().len(), 3);
    one_key(&server.seen());
    assert_eq!(server.charges(), 0);
}

#[tokio::test]
async fn dropped_connections_are_bounded_too() {
    let (url, server) = serve(vec![Fault::DropAfterCharge; 10]).await;
    let error = pay(&client(fast().max_attempts(3)), &url)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, reqwest_middleware::Error::Reqwest(e) if e.is_request()),
        "{error:?}"
    );
    assert_eq!(server.seen().len(), 3);
    one_key(&server.seen());
    assert_eq!(server.charges(), 1);
}

#[tokio::test]
async fn total_time_is_bounded() {
    let (url, server) = serve(vec![Fault::Status(503); 1000]).await;
    let retry = IdempotencyRetry::new()
        .max_attempts(1000)
        .max_total_time(Duration::from_millis(600))
        .backoff(Duration::from_millis(20), Duration::from_millis(40));
    let started = Instant::now();
    let outcome = pay(&client(retry), &url).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(900), "took {elapsed:?}");
    let seen = server.seen().len();
    assert!((3..1000).contains(&seen), "{seen} attempts");
    // Either the budget ended during a wait (the last answer is returned), or during an
    // attempt (cancelled: out of time; the server may not have seen that one yet).
    let reported = match outcome {
        Ok(response) => {
            assert_eq!(response.status(), 503);
            report(&response).attempts
        }
        Err(reqwest_middleware::Error::Middleware(inner)) => {
            match inner.downcast_ref::<RetryError>() {
                Some(RetryError::OutOfTime { attempts, .. }) => *attempts,
                other => panic!("{other:?}"),
            }
        }
        Err(other) => panic!("{other:?}"),
    };
    let reported = reported as usize;
    assert!(
        reported == seen || reported == seen + 1,
        "{reported} vs {seen}"
    );
}

#[tokio::test]
async fn a_hanging_attempt_is_cut_at_the_budget() {
    let (url, server) = serve(vec![Fault::Hang]).await;
    let retry = fast().max_total_time(Duration::from_millis(400));
    let started = Instant::now();
    // (The outer timeout turns a missing bound into a failure, not a hang.)
    let error = tokio::time::timeout(Duration::from_secs(5), pay(&client(retry), &url))
        .await
        .expect("the budget did not cut the attempt")
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("{error:?}")
    };
    assert!(
        matches!(
            inner.downcast_ref::<RetryError>(),
            Some(RetryError::OutOfTime { attempts: 1, .. })
        ),
        "{inner:?}"
    );
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn the_last_attempt_timeout_is_reported() {
    let plan = vec![Fault::Hang; 2];
    let (url, server) = serve(plan).await;
    let retry = fast()
        .max_attempts(2)
        .attempt_timeout(Duration::from_millis(100));
    let error = tokio::time::timeout(Duration::from_secs(5), pay(&client(retry), &url))
        .await
        .expect("the attempt timeout did not cut the attempt")
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("{error:?}")
    };
    assert!(
        matches!(
            inner.downcast_ref::<RetryError>(),
            Some(RetryError::AttemptTimedOut { attempts: 2, .. })
        ),
        "{inner:?}"
    );
    assert_eq!(server.seen().len(), 2);
    one_key(&server.seen());
}

// ---------------------------------------------------------------------------------------------
// The caller's key.

#[tokio::test]
async fn a_key_header_set_by_the_caller_is_kept() {
    let (url, server) = serve(vec![Fault::DropAfterCharge]).await;
    let response = client(fast())
        .post(format!("{url}/payments"))
        .header("Idempotency-Key", "txn_001")
        .body(CHARGE)
        .send()
        .await
        .unwrap();
    assert_eq!(report(&response).key.as_deref(), Some("txn_001"));
    assert_eq!(receipt(response).await.charge_id, 1);
    assert_eq!(
        server.seen(),
        vec![Some("txn_001".to_owned()), Some("txn_001".to_owned())]
    );
    assert_eq!(server.charges(), 1);
}

#[tokio::test]
async fn a_request_key_extension_is_sent_as_an_sf_string() {
    let (url, server) = serve(vec![Fault::Status(503)]).await;
    let response = client(fast())
        .post(format!("{url}/payments"))
        .with_extension(RequestKey::new("txn_002"))
        .body(CHARGE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        server.seen(),
        vec![
            Some("\"txn_002\"".to_owned()),
            Some("\"txn_002\"".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_unsendable_key_fails_before_any_attempt() {
    let (url, server) = serve(vec![]).await;
    let error = client(fast())
        .post(format!("{url}/payments"))
        .with_extension(RequestKey::new(""))
        .body(CHARGE)
        .send()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("idempotency key"), "{error}");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn the_header_name_and_key_generator_are_configurable() {
    let (url, server) = serve_with(
        vec![Fault::Status(503)],
        Duration::ZERO,
        "paypal-request-id",
    )
    .await;
    let retry = fast()
        .header_name(HeaderName::from_static("paypal-request-id"))
        .key_generator(|| "generated".to_owned());
    let response = pay(&client(retry), &url).await.unwrap();
    assert_eq!(receipt(response).await.charge_id, 1);
    assert_eq!(
        server.seen(),
        vec![
            Some("\"generated\"".to_owned()),
            Some("\"generated\"".to_owned())
        ]
    );
}

/// Two requests are two keys (and two charges): the key is per request, not per client.
#[tokio::test]
async fn each_request_gets_its_own_key() {
    let (url, server) = serve(vec![]).await;
    let client = client(fast());
    pay(&client, &url).await.unwrap();
    pay(&client, &url).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0], seen[1]);
    assert_eq!(server.charges(), 2);
}
