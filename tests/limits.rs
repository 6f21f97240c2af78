//! An output larger than the store can hold is refused before anything is written: a
//! clean `Error::Codec`, and the claim released — never an `Ok` whose record fails, leaving
//! the key held for its lease and then run again (seen on MariaDB, whose
//! `max_allowed_packet` is 16 MiB here).
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::{Store, idempotent};
use support::sql::{Backend, unique};
use support::{AppError, Calls};

#[idempotent(key = key, store = store, skip(calls, len))]
async fn sized(store: &dyn Store, calls: &Calls, key: &str, len: usize) -> Result<usize, AppError> {
    calls.hit();
    Ok(len)
}

/// Returns `len` bytes of text, as the output to record (a string encodes in one copy).
#[idempotent(key = key, store = store, skip(calls, len))]
async fn blob(store: &dyn Store, calls: &Calls, key: &str, len: usize) -> Result<String, AppError> {
    calls.hit();
    Ok("z".repeat(len))
}

async fn refuses_what_it_cannot_hold(backend: Backend) {
    let table = unique("idem_limit");
    let db = backend.connect(&table).await;
    let store = &*db.store;
    // The limit is learned with the first claim where the server has one.
    let calls = Calls::default();
    assert_eq!(sized(store, &calls, "warm-up", 1).await.unwrap(), 1);
    let max = store.max_output_len();

    let calls = Calls::default();
    let err = blob(store, &calls, "k", max)
        .await
        .map(|v| v.len())
        .unwrap_err();
    assert!(
        matches!(err.idem(), Some(idem::Error::Codec(_))),
        "{}: {err:?}",
        backend.name()
    );
    // Released at once: the next call runs, and records.
    assert_eq!(blob(store, &calls, "k", 10).await.unwrap().len(), 10);
    assert_eq!(blob(store, &calls, "k", 10).await.unwrap().len(), 10);
    assert_eq!(calls.count(), 2, "{}", backend.name());
    // The largest output the store states is recorded and replayed (less the encoding's
    // own bytes).
    let calls = Calls::default();
    let len = max - 64;
    assert_eq!(blob(store, &calls, "big", len).await.unwrap().len(), len);
    assert_eq!(blob(store, &calls, "big", len).await.unwrap().len(), len);
    assert_eq!(calls.count(), 1, "{}", backend.name());
    db.drop_tables(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql() {
    if let Some(backend) = Backend::mysql() {
        refuses_what_it_cannot_hold(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    if let Some(backend) = Backend::postgres() {
        refuses_what_it_cannot_hold(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    refuses_what_it_cannot_hold(Backend::sqlite()).await;
}

#[idempotent(key = key, store = store, tx = tx, skip(len))]
async fn blob_in_tx(
    store: &idem::sqlx::MySqlStore,
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    key: &str,
    len: usize,
) -> Result<String, AppError> {
    Ok("z".repeat(len))
}

/// Transactional mode too: the output is refused before `complete_in`, and the claim is
/// removed inside the transaction, so committing it leaves the key free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_transactional() {
    let Some(backend) = Backend::mysql() else {
        return;
    };
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .connect(backend.url())
        .await
        .unwrap();
    let table = unique("idem_limit_tx");
    let store = idem::sqlx::MySqlStore::new(pool.clone())
        .with_table(&table)
        .unwrap();
    store.migrate().await.unwrap();
    let max = store.max_output_len();

    let mut tx = pool.begin().await.unwrap();
    let err = blob_in_tx(&store, &mut tx, "k", max)
        .await
        .map(|s| s.len())
        .unwrap_err();
    assert!(matches!(err.idem(), Some(idem::Error::Codec(_))), "{err:?}");
    tx.commit().await.unwrap();
    for _ in 0..2 {
        let mut tx = pool.begin().await.unwrap();
        assert_eq!(
            blob_in_tx(&store, &mut tx, "k", 10).await.unwrap().len(),
            10
        );
        tx.commit().await.unwrap();
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE `{table}`")))
        .execute(&pool)
        .await
        .unwrap();
}
