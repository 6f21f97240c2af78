//! Transactional mode vs plain mode on PostgreSQL (`IDEM_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`): the same body — one `UPDATE` of an account
//! row — made idempotent either way. Plain mode: claim and record commit on their own, the
//! body's write in its own transaction. Transactional mode (`tx = tx`): claim, write and
//! record in the caller's one transaction.
//!
//! `cargo bench --bench transactional --all-features`

use criterion::{Criterion, criterion_group, criterion_main};
use idem::idempotent;
use idem::sqlx::PgStore;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct BenchError;

impl From<idem::Error> for BenchError {
    fn from(_: idem::Error) -> Self {
        BenchError
    }
}

impl From<sqlx::Error> for BenchError {
    fn from(_: sqlx::Error) -> Self {
        BenchError
    }
}

const ACCOUNTS: &str = "idem_bench_tx_accounts";

#[idempotent(key = id, store = store, skip(pool), name = "bench.plain")]
async fn plain(store: &PgStore, pool: &PgPool, id: u64) -> Result<i64, BenchError> {
    let mut tx = pool.begin().await?;
    let balance = debit(&mut tx).await?;
    tx.commit().await?;
    Ok(balance)
}

#[idempotent(key = id, store = store, tx = tx, name = "bench.tx")]
async fn transactional(
    store: &PgStore,
    tx: &mut Transaction<'_, Postgres>,
    id: u64,
) -> Result<i64, BenchError> {
    debit(tx).await
}

async fn debit(tx: &mut Transaction<'_, Postgres>) -> Result<i64, BenchError> {
    let q = format!("UPDATE {ACCOUNTS} SET balance = balance - 1 WHERE id = 1 RETURNING balance");
    Ok(sqlx::query_scalar(AssertSqlSafe(q))
        .fetch_one(&mut **tx)
        .await?)
}

async fn in_tx(store: &PgStore, pool: &PgPool, id: u64) -> Result<i64, BenchError> {
    let mut tx = pool.begin().await?;
    let balance = transactional(store, &mut tx, id).await?;
    tx.commit().await?;
    Ok(balance)
}

fn bench(c: &mut Criterion) {
    let url = std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (store, pool) = rt.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect(&url)
            .await
            .unwrap();
        let table = format!("idem_bench_tx_{}", std::process::id());
        let store = PgStore::new(pool.clone()).with_table(&table).unwrap();
        store.migrate().await.unwrap();
        for q in [
            format!("DROP TABLE IF EXISTS {ACCOUNTS}"),
            format!("CREATE TABLE {ACCOUNTS} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)"),
            format!("INSERT INTO {ACCOUNTS} VALUES (1, 0)"),
        ] {
            sqlx::query(AssertSqlSafe(q)).execute(&pool).await.unwrap();
        }
        (store, pool)
    });
    let next = AtomicU64::new(1);
    let mut group = c.benchmark_group("pg/transactional_vs_plain");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    for (name, tx_mode, fresh) in [
        ("fresh/plain", false, true),
        ("fresh/tx", true, true),
        ("replay/plain", false, false),
        ("replay/tx", true, false),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let id = if fresh {
                            next.fetch_add(1, Ordering::Relaxed)
                        } else {
                            0
                        };
                        if tx_mode {
                            in_tx(&store, &pool, id).await.unwrap();
                        } else {
                            plain(&store, &pool, id).await.unwrap();
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
    rt.block_on(async {
        for t in [store.table(), ACCOUNTS] {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE {t}")))
                .execute(&pool)
                .await
                .unwrap();
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
