//! The article's other techniques, and how each composes with idem (README, "Recipes"):
//! a natural upsert, a state-machine transition inside `tx =`, optimistic versioning, and a
//! fan-out where two consumers of one event each keep their own records. On SQLite in
//! memory (one connection: every connection to `sqlite::memory:` is a database of its own).
#![cfg(feature = "sqlite")]

use idem::idempotent;
use idem::sqlx::SqliteStore;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{Sqlite, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, Transaction};

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Idem(#[from] idem::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("order {0} is not pending")]
    NotPending(i64),
    #[error("account {0} changed meanwhile")]
    Stale(i64),
}

async fn database() -> (SqlitePool, SqliteStore) {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    for ddl in [
        "CREATE TABLE payments (id TEXT PRIMARY KEY, cents INTEGER NOT NULL)",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, state TEXT NOT NULL)",
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, version INTEGER NOT NULL)",
        "CREATE TABLE effects (consumer TEXT NOT NULL, event TEXT NOT NULL)",
    ] {
        sqlx::query(ddl).execute(&pool).await.unwrap();
    }
    let store = SqliteStore::new(pool.clone());
    store.migrate().await.unwrap();
    (pool, store)
}

async fn count(pool: &SqlitePool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// 1. A natural upsert: when the effect is one row keyed by a natural id, the database's
///    own uniqueness makes it idempotent — no key, no record. Enough when the caller does
///    not need the first call's result back and the payload cannot differ.
#[tokio::test]
async fn a_natural_upsert_needs_no_key() {
    let (pool, _) = database().await;
    for _ in 0..3 {
        sqlx::query("INSERT INTO payments (id, cents) VALUES (?, ?) ON CONFLICT (id) DO NOTHING")
            .bind("pay-1")
            .bind(500)
            .execute(&pool)
            .await
            .unwrap();
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM payments").await, 1);
}

/// 2. A state-machine transition inside `tx =`: the guarded `UPDATE` moves the order only
///    from `pending`, and the record commits with it. A retry replays the first result; a
///    second attempt under another key is refused by the state itself.
#[idempotent(key = key, store = store, tx = tx, skip(order))]
async fn pay(
    store: &SqliteStore,
    tx: &mut Transaction<'_, Sqlite>,
    key: &str,
    order: i64,
) -> Result<String, AppError> {
    let moved = sqlx::query("UPDATE orders SET state = 'paid' WHERE id = ? AND state = 'pending'")
        .bind(order)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if moved == 0 {
        return Err(AppError::NotPending(order));
    }
    Ok(format!("order {order} paid"))
}

#[tokio::test]
async fn a_state_transition_commits_with_its_record() {
    let (pool, store) = database().await;
    sqlx::query("INSERT INTO orders (id, state) VALUES (1, 'pending')")
        .execute(&pool)
        .await
        .unwrap();
    let mut results = Vec::new();
    for _ in 0..2 {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        results.push(pay(&store, &mut tx, "pay-order-1", 1).await.unwrap());
        tx.commit().await.unwrap();
    }
    assert_eq!(
        results,
        ["order 1 paid", "order 1 paid"],
        "the retry replays"
    );
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let other_key = pay(&store, &mut tx, "another-key", 1).await;
    tx.rollback().await.unwrap();
    assert!(
        matches!(other_key, Err(AppError::NotPending(1))),
        "{other_key:?}"
    );
}

/// 3. Optimistic versioning: the `UPDATE` applies only to the version it read, so a
///    concurrent change makes it touch no row (`Stale`: re-read and try again). With the
///    default `errors = release` a stale attempt leaves no record, and its retry runs.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Balance {
    balance: i64,
    version: i64,
}

#[idempotent(key = key, store = store, tx = tx, skip(seen_version))]
async fn deposit(
    store: &SqliteStore,
    tx: &mut Transaction<'_, Sqlite>,
    key: &str,
    account: i64,
    cents: i64,
    seen_version: i64,
) -> Result<Balance, AppError> {
    let row = sqlx::query(
        "UPDATE accounts SET balance = balance + ?, version = version + 1 \
         WHERE id = ? AND version = ? RETURNING balance, version",
    )
    .bind(cents)
    .bind(account)
    .bind(seen_version)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(AppError::Stale(account))?;
    Ok(Balance {
        balance: row.get(0),
        version: row.get(1),
    })
}

#[tokio::test]
async fn optimistic_versioning_retries_a_stale_write() {
    let (pool, store) = database().await;
    sqlx::query("INSERT INTO accounts (id, balance, version) VALUES (7, 100, 3)")
        .execute(&pool)
        .await
        .unwrap();
    // Read at version 2: someone changed the account since.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let stale = deposit(&store, &mut tx, "dep-1", 7, 50, 2).await;
    tx.commit().await.unwrap();
    assert!(matches!(stale, Err(AppError::Stale(7))), "{stale:?}");
    // Re-read, retry with the same key: it runs (the stale attempt left no record).
    for _ in 0..2 {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let done = deposit(&store, &mut tx, "dep-1", 7, 50, 3).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            done,
            Balance {
                balance: 150,
                version: 4
            },
            "run once, then replayed"
        );
    }
    assert_eq!(
        count(&pool, "SELECT balance FROM accounts WHERE id = 7").await,
        150
    );
}

/// 4. A fan-out: two consumers of one event each make their handler idempotent under their
///    own `name =`, so each runs once per event, and neither's record replays for the other.
#[idempotent(key = event, store = store, name = "billing.on_order_placed", skip(pool))]
async fn bill(store: &SqliteStore, pool: &SqlitePool, event: &str) -> Result<(), AppError> {
    effect(pool, "billing", event).await
}

#[idempotent(key = event, store = store, name = "mail.on_order_placed", skip(pool))]
async fn mail(store: &SqliteStore, pool: &SqlitePool, event: &str) -> Result<(), AppError> {
    effect(pool, "mail", event).await
}

async fn effect(pool: &SqlitePool, consumer: &str, event: &str) -> Result<(), AppError> {
    sqlx::query("INSERT INTO effects (consumer, event) VALUES (?, ?)")
        .bind(consumer)
        .bind(event)
        .execute(pool)
        .await?;
    Ok(())
}

#[tokio::test]
async fn two_consumers_of_one_event_each_run_once() {
    let (pool, store) = database().await;
    for _ in 0..3 {
        // Every delivery reaches both consumers; redeliveries replay.
        bill(&store, &pool, "order-42").await.unwrap();
        mail(&store, &pool, "order-42").await.unwrap();
    }
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT consumer, event FROM effects ORDER BY consumer")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expected = [("billing", "order-42"), ("mail", "order-42")];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(c, e)| (c.to_string(), e.to_string()))
        .collect();
    assert_eq!(rows, expected);
}
