//! The database goes away and comes back: calls fail with `Error::Store` naming the
//! operation — no panic, no body run without a claim — and work again once it is back.
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::sqlx::PgStore;
use idem::{StoreError, idempotent};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use support::proxy::Proxy;
use support::sql::{Backend, unique};
use support::{AppError, Calls};

#[idempotent(key = key, store = store, skip(calls))]
async fn guarded(store: &PgStore, calls: &Calls, key: &str) -> Result<usize, AppError> {
    Ok(calls.hit())
}

/// Cuts the connection to the database while the body runs: its result cannot be recorded
/// until the test restores the connection.
#[idempotent(key = key, store = store, skip(calls, proxy))]
async fn cut_mid_call(
    store: &PgStore,
    calls: &Calls,
    key: &str,
    proxy: &Proxy,
) -> Result<usize, AppError> {
    proxy.cut();
    Ok(calls.hit())
}

fn store_error(result: Result<usize, AppError>) -> String {
    match result {
        Err(AppError::Idem(idem::Error::Store(
            e @ (StoreError::Backend { .. } | StoreError::Timeout { .. }),
        ))) => e.to_string(),
        other => panic!("expected a store error, got {other:?}"),
    }
}

/// A store behind a proxy the test can cut, in a fresh table.
async fn store_behind(proxy_for: &Backend) -> (PgStore, Proxy, String) {
    let options: PgConnectOptions = proxy_for.url().parse().unwrap();
    let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(options.clone().host("127.0.0.1").port(proxy.port()))
        .await
        .unwrap();
    let table = unique("idem_outage");
    let store = PgStore::new(pool).with_table(&table).unwrap();
    store.migrate().await.unwrap();
    (store, proxy, table)
}

async fn drop_table(store: &PgStore, table: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(store.pool())
        .await
        .unwrap();
}

/// The connection dies between the body and its record: the record is retried until the
/// database is back, so the retry replays instead of running again after the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_fails_to_write_is_retried_until_the_database_is_back() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let (store, proxy, table) = store_behind(&backend).await;
    let calls = Calls::default();
    let (first, ()) = tokio::join!(cut_mid_call(&store, &calls, "k", &proxy), async {
        // Longer than the pool's 500 ms acquire timeout: the first record attempt fails.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.restore().await;
    });
    assert_eq!(first.unwrap(), 1);
    assert_eq!(
        cut_mid_call(&store, &calls, "k", &proxy).await.unwrap(),
        1,
        "the retry replays the recorded result"
    );
    assert_eq!(calls.count(), 1);
    drop_table(&store, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_store_error_until_it_is_back() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let (store, proxy, table) = store_behind(&backend).await;
    let calls = Calls::default();
    assert_eq!(guarded(&store, &calls, "before").await.unwrap(), 1);

    proxy.cut();
    let fresh = store_error(guarded(&store, &calls, "during").await);
    assert!(
        fresh.contains("claim"),
        "the error names the operation: {fresh}"
    );
    let replay = store_error(guarded(&store, &calls, "before").await);
    assert!(replay.contains("claim"), "{replay}");
    assert_eq!(calls.count(), 1, "no body ran without a claim");

    proxy.restore().await;
    assert_eq!(guarded(&store, &calls, "during").await.unwrap(), 2);
    assert_eq!(
        guarded(&store, &calls, "before").await.unwrap(),
        1,
        "the old record replays"
    );
    drop_table(&store, &table).await;
}
