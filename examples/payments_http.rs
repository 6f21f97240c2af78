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
//! # how many duplicates were absorbed: idem_replays_total, idem_conflicts_total, ...
//! curl localhost:3000/metrics
//! ```

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use idem::Store;
use idem::http::IdempotencyLayer;
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
    let idempotency = IdempotencyLayer::new(store().await?)
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
        .route("/metrics", get(move || async move { prometheus.render() }));
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
