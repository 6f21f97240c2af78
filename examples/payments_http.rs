//! `POST /payments` made idempotent by the `Idempotency-Key` header, as Stripe's API is.
//!
//! `cargo run --example payments_http --features axum,sqlite,postgres,metrics`
//!
//! Records go to an SQLite file in the temp dir, or to PostgreSQL when `DATABASE_URL` is set
//! (`postgres://...`), so they outlive a restart and every replica shares them. Each
//! account's keys are its own (`X-Account-Id` stands in for your authentication). Then:
//!
//! ```sh
//! # the first request charges; its retry replays (Idempotent-Replayed: true)
//! curl -i localhost:3000/payments -H 'X-Account-Id: acct_1' -H 'Idempotency-Key: "txn_001"' \
//!      -H 'Content-Type: application/json' -d '{"amount":500,"currency":"eur"}'
//! # the same key with another amount: 422
//! curl -i localhost:3000/payments -H 'X-Account-Id: acct_1' -H 'Idempotency-Key: "txn_001"' \
//!      -H 'Content-Type: application/json' -d '{"amount":900,"currency":"eur"}'
//! # a duplicate while the first still runs (the charge takes 2 s): 409 + Retry-After
//! curl -s localhost:3000/payments -H 'X-Account-Id: acct_1' -H 'Idempotency-Key: txn_002' \
//!      -H 'Content-Type: application/json' -d '{"amount":100,"currency":"eur"}' & sleep 0.5
//! curl -i localhost:3000/payments -H 'X-Account-Id: acct_1' -H 'Idempotency-Key: txn_002' \
//!      -H 'Content-Type: application/json' -d '{"amount":100,"currency":"eur"}'
//! # a handler that calls an #[idempotent] function itself, and says when it replayed
//! curl -i localhost:3000/refunds -H 'X-Account-Id: acct_1' -H 'Idempotency-Key: "rf_1"' \
//!      -H 'Content-Type: application/json' -d '{"payment":"pay_000001","amount":500}'
//! # how many duplicates were absorbed: idem_replays_total, idem_conflicts_total, ...
//! curl localhost:3000/metrics
//! ```

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idem::http::{IdempotencyKey, IdempotencyLayer, problem};
use idem::{Store, Tracked, idempotent};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Deserialize)]
struct NewPayment {
    amount: u64,
    currency: String,
}

#[derive(Serialize)]
struct Payment {
    id: String,
    amount: u64,
    currency: String,
    status: &'static str,
}

/// Charges once per (account, key): a retry gets the first response back, even after a
/// restart of this program.
async fn create_payment(
    State(charges): State<Arc<AtomicU64>>,
    Json(new): Json<NewPayment>,
) -> impl IntoResponse {
    // The card network takes a while: a duplicate sent meanwhile gets 409 + Retry-After.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
    let id = format!("pay_{n:06}");
    println!("charged {} {} as {id}", new.amount, new.currency);
    let location = format!("/payments/{id}");
    let payment = Payment {
        id,
        amount: new.amount,
        currency: new.currency,
        status: "succeeded",
    };
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(payment),
    )
}

#[derive(Serialize, Deserialize)]
struct NewRefund {
    payment: String,
    amount: u64,
}

#[derive(Serialize, Deserialize)]
struct Refund {
    payment: String,
    amount: u64,
    status: String,
}

/// The macro on a function the handler calls, keyed by the request's `Idempotency-Key`
/// within its account; `Tracked` says whether this call ran the refund or replayed it.
#[idempotent(key = key, scope = account, store = store, skip(store))]
async fn refund(
    store: &Arc<dyn Store>,
    account: String,
    key: IdempotencyKey,
    new: NewRefund,
) -> Result<Tracked<Refund>, idem::Error> {
    println!("refunded {} of {}", new.amount, new.payment);
    Ok(Tracked::new(Refund {
        payment: new.payment,
        amount: new.amount,
        status: "refunded".to_owned(),
    }))
}

async fn create_refund(
    State(store): State<Arc<dyn Store>>,
    headers: HeaderMap,
    key: IdempotencyKey,
    Json(new): Json<NewRefund>,
) -> Response {
    let Some(account) = headers.get("x-account-id").and_then(|v| v.to_str().ok()) else {
        return (StatusCode::UNAUTHORIZED, "X-Account-Id is missing").into_response();
    };
    match refund(&store, account.to_owned(), key, new).await {
        Ok(refund) => {
            let mut response = Json(&*refund).into_response();
            *response.status_mut() = StatusCode::CREATED;
            if refund.was_replayed() {
                let replayed = header::HeaderValue::from_static("true");
                response
                    .headers_mut()
                    .insert("idempotent-replayed", replayed);
            }
            response
        }
        Err(e) => problem(&e), // 409 / 422 / 503 as problem+json
    }
}

async fn store() -> Result<Arc<dyn Store>, Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let pool = sqlx::PgPool::connect(&url).await?;
        let store = idem::sqlx::PgStore::new(pool);
        store.migrate().await?;
        println!("records in PostgreSQL");
        return Ok(Arc::new(store));
    }
    let path = std::env::temp_dir().join("idem_payments_http.sqlite");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let store = idem::sqlx::SqliteStore::new(sqlx::SqlitePool::connect_with(options).await?);
    store.migrate().await?;
    println!("records in {}", path.display());
    Ok(Arc::new(store))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // idem's counters (feature `metrics`), served in the Prometheus text format.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let store = store().await?;
    let idempotency = IdempotencyLayer::new(store.clone())
        // Whose key is it? Here a header; in your service, the authenticated account.
        .scope(|parts| {
            let account = parts.headers.get("x-account-id")?;
            Some(account.to_str().ok()?.to_owned())
        });
    let app = Router::new()
        .route("/payments", post(create_payment))
        .with_state(Arc::new(AtomicU64::new(0)))
        .layer(idempotency)
        // Outside the layer: GET passes through it anyway, but /metrics needs none of it.
        .route("/metrics", get(move || async move { prometheus.render() }))
        // Not behind the layer: the handler makes its own call idempotent.
        .merge(
            Router::new()
                .route("/refunds", post(create_refund))
                .with_state(store),
        );
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
