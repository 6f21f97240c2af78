//! `PgStore` against a real PostgreSQL (`IDEM_TEST_POSTGRES_URL`).
#![cfg(feature = "postgres")]

mod support;

use idem_core::store::Claim;
use idem_core::{Fingerprint, Key, Store, testing};
use idem_sqlx::{ClaimOrder, PgStore};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::sync::Arc;

async fn pool() -> Option<PgPool> {
    let url = support::server_url("IDEM_TEST_POSTGRES_URL", "PostgreSQL")?;
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}"));
    Some(pool)
}

/// A store in a fresh table, dropped when the test is done.
async fn with_store<F, Fut>(test: F)
where
    F: FnOnce(Arc<PgStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(pool) = pool().await else { return };
    let table = support::unique_table("idem_pg");
    let store = PgStore::new(pool.clone()).with_table(&table).unwrap();
    store.migrate().await.unwrap();
    test(Arc::new(store)).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}

support::conformance!(store);
support::tx_conformance!(store);

/// Transactions for the transactional checks.
fn transactions(store: &PgStore) -> Arc<support::Transactions<sqlx::Postgres>> {
    support::Transactions::new(store.pool())
}

#[tokio::test]
async fn migrate_twice_and_concurrently() {
    with_store(|store| async move {
        store.migrate().await.unwrap();
        let (a, b) = tokio::join!(store.migrate(), store.migrate());
        a.unwrap();
        b.unwrap();
    })
    .await;
}

/// Runs `sql` (built from a test table name) on `pool`: the rows it changed, or the error.
async fn run(pool: &PgPool, sql: String) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
    Ok(done.rows_affected())
}

/// Runs `sql` (built from a test table name) on `pool`; returns the rows it changed.
async fn exec(pool: &PgPool, sql: String) -> u64 {
    run(pool, sql.clone())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `bytes` as a PostgreSQL literal.
fn bytea(bytes: &[u8]) -> String {
    format!("'\\x{}'::bytea", support::hex(bytes))
}

/// Writes to `store`'s records behind its back.
fn tamper(
    store: &PgStore,
) -> support::Tamper<impl AsyncFnMut(String) -> Result<u64, sqlx::Error> + '_> {
    support::Tamper::new(store.table(), bytea, async |sql| {
        run(store.pool(), sql).await
    })
}

/// A record whose columns were damaged outside idem: garbage output bytes replay as an
/// `Error::Codec` when decoded, a malformed fingerprint is a store error — never a panic.
#[tokio::test]
async fn corrupt_columns_are_errors_not_panics() {
    with_store(|store| async move {
        let mut tamper = tamper(&store);
        support::corrupt_outputs_are_codec_errors(&*store, &mut tamper).await;
        let fingerprint = [("fingerprint = '\\x0102'::bytea", support::Then::Corrupt(""))];
        support::damaged_records(&*store, &mut tamper, &[false], &fingerprint).await;
    })
    .await;
}

/// Item 5 of issue 8: a retry of `complete` after a lost reply is `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_is_idempotent_for_its_owner() {
    with_store(|store| async move {
        support::complete_is_idempotent_for_its_owner(&*store).await;
    })
    .await;
}

/// Item 4: PostgreSQL's limit (1 GB per BYTEA) is above the codec's 64 MiB, which the store
/// states, and an output of that size is recorded and replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_output_round_trips() {
    with_store(|store| async move {
        let max = support::largest_output_round_trips(&*store).await;
        assert_eq!(max, idem_core::codec::MAX_ENCODED_LEN);
    })
    .await;
}

/// Item 8: reserved words work as table names (every statement quotes the name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_words_as_table_names() {
    let Some(pool) = pool().await else { return };
    support::for_each_reserved_word(move |word| {
        let pool = pool.clone();
        async move {
            // PostgreSQL folds unquoted names to lower case; the store quotes the folded name.
            let quoted = format!("\"{}\"", word.to_lowercase());
            exec(&pool, format!("DROP TABLE IF EXISTS {quoted}")).await;
            let store = PgStore::new(pool.clone()).with_table(word).unwrap();
            store
                .migrate()
                .await
                .unwrap_or_else(|e| panic!("migrate of table {word:?}: {e}"));
            store.migrate().await.unwrap();
            support::exercise(&store).await;
            exec(&pool, format!("DROP TABLE {quoted}")).await;
        }
    })
    .await;
}

/// A table made by a version that did not quote names (`MyTable` was folded to `mytable`)
/// is still the one a store named `MyTable` uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_case_names_keep_their_unquoted_table() {
    let Some(pool) = pool().await else { return };
    let name = support::unique_table("Idem_Pg_Case");
    let folded = name.to_lowercase();
    let old = PgStore::new(pool.clone()).with_table(&folded).unwrap();
    old.migrate().await.unwrap();
    let key = Key::new("case", "k").unwrap();
    let fp = Fingerprint::from_bytes([2; 32]);
    support::claimed(&old, &key, &fp, support::LONG_LEASE).await;
    let store = PgStore::new(pool.clone()).with_table(&name).unwrap();
    store.migrate().await.unwrap();
    assert!(matches!(
        store.claim(&key, &fp, support::LONG_LEASE).await,
        Ok(Claim::InProgress(_))
    ));
    exec(&pool, format!("DROP TABLE {folded}")).await;
}

/// Item 7: a NUL byte in a key or scope (within the preview's 64 characters) works like any
/// other key; the preview stores it as `␀`, and keeps 64 characters however wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_in_keys_and_scopes() {
    with_store(|store| async move {
        let fp = Fingerprint::from_bytes([4; 32]);
        let keys = [
            Key::new("nul", "a\0b").unwrap(),
            Key::new("nul", "\0").unwrap(),
            Key::scoped("nul", "tenant\0", "k").unwrap(),
            Key::new("nul\0namespace", "k").unwrap(),
        ];
        for key in &keys {
            let token = store
                .claim(key, &fp, support::LONG_LEASE)
                .await
                .unwrap_or_else(|e| panic!("claim of {key:?}: {e}"));
            let Claim::Claimed(token) = token else {
                panic!("{key:?}: {token:?}")
            };
            store
                .complete(
                    key,
                    token,
                    support::output(&b"\x01v"[..]),
                    support::LONG_LEASE,
                )
                .await
                .unwrap();
            support::replayed(&*store, key, &fp).await;
        }
        // Another key that differs only in the NUL is another record.
        support::claimed(
            &*store,
            &Key::new("nul", "ab").unwrap(),
            &fp,
            support::LONG_LEASE,
        )
        .await;
        let preview: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT key_preview FROM {} WHERE key_digest = $1",
            store.table()
        )))
        .bind(&keys[0].digest().as_bytes()[..])
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(preview, "a\u{2400}b");
        // 64 characters of 2-byte text, then `…`.
        let wide = Key::new("wide", &"é".repeat(100)).unwrap();
        support::claimed(&*store, &wide, &fp, support::LONG_LEASE).await;
        let chars: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT char_length(key_preview) FROM {} WHERE key_digest = $1",
            store.table()
        )))
        .bind(&wide.digest().as_bytes()[..])
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(chars, 65);
    })
    .await;
}

/// Item 10: `expires_at = -infinity` counts as expired; `+infinity` (or any deadline further
/// ahead than a store ever writes) is a corrupt record naming the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_and_far_deadlines() {
    use support::Then::{Corrupt, Expired};
    let corrupt = Corrupt("corrupt record: expires_at");
    with_store(|store| async move {
        let cases = [
            ("expires_at = '-infinity'", Expired),
            ("expires_at = 'infinity'", corrupt),
            ("expires_at = '294276-12-31 00:00:00+00'", corrupt),
            ("expires_at = now() + interval '1000 years'", corrupt),
        ];
        support::damaged_records(&*store, &mut tamper(&store), &[false, true], &cases).await;
    })
    .await;
}

/// Coalesced claims and completes (`with_coalescing(true)`).
mod coalescing {
    use super::*;

    support::coalesce::coalescing_tests!();

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_send_fewer_statements() {
        with_store(|store| async move {
            let coalesced = Arc::new((*store).clone().with_coalescing(true));
            let table = store.table().to_owned();
            support::coalesce::batches_send_fewer_statements(store, coalesced, &table).await;
        })
        .await;
    }
}
