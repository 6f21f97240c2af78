//! The SQL stores through `#[idempotent]` against a hand-written minimal protocol through
//! the same pool, in the same run. The figure that matters is the ratio (BENCHMARKS.md).
//!
//! Per backend — SQLite (a file in the temp dir, WAL, `synchronous = NORMAL`), PostgreSQL
//! and MySQL/MariaDB — criterion measures `idem` (the macro on the store) and `baseline`:
//!
//! - `fresh`: a new key per call. The baseline is `INSERT … ON CONFLICT DO NOTHING`
//!   (MySQL: `INSERT IGNORE`) of an in-progress row, the body, and one fenced `UPDATE`
//!   writing the bincode output, into a table of the same shape (made by the store's own
//!   `migrate()`).
//! - `replay`: the recorded key. The baseline is one `SELECT` of the output by key, the
//!   fingerprint compare and the decode.
//! - `fresh_16_tasks`: 16 tasks on the 2-worker runtime, fresh distinct keys (throughput).
//!
//! Then, unless `IDEM_BENCH_PAIRED=0`, paired measurements (`benches/support/paired.rs`)
//! print (to stderr) the same comparisons interleaved round by round, which is what
//! resolves a 10% difference on a machine whose other users come and go, with this
//! process's CPU time per call, and compare hand-written variants that locate the cost
//! (`baseline.rs`, `Variant`): `read_first_1conn` (a `SELECT` by key before the insert, on
//! one acquired connection: a fresh key when a store reads first), `insert_first` (the
//! replay in the other order: the insert-if-absent, then the `SELECT`: a replay when a
//! store inserts first), `store_read` (SQLite, MySQL: the replay with the store's own read
//! statement) and, on PostgreSQL, `claim_cte` (the one-statement claim `PgStore` used up to
//! 7eec192: the insert and a read of the row in one CTE, fresh and replay, by hand).
//!
//! Both sides compute a SHA-256 key digest and a 256-bit fingerprint of the request, bind
//! the same columns and share one pool: `test_before_acquire(false)` (the default ping on
//! acquire costs 35–45% of a replay) and room for 16 tasks. Each run makes its own tables
//! (SQLite: its own file) and drops them at the end. Times are wall-clock: a call is mostly
//! waiting for the server and its fsync, which CPU time would not see.
//!
//! The protocol by hand is written once (`baseline.rs`); each database's statements are in
//! `sqlite.rs`, `postgres.rs` and `mysql.rs`. PostgreSQL and MySQL/MariaDB are reached at
//! `IDEM_TEST_POSTGRES_URL` / `IDEM_TEST_MYSQL_URL` (as the tests), by default this
//! machine's loopback servers; a backend that cannot be reached is skipped with a note.

#[path = "../support/mod.rs"]
mod support;

mod baseline;
mod batched;
mod coalesce;
mod mysql;
mod postgres;
mod sqlite;

use baseline::{Baseline, Dialect};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use idem::protocol::Idempotent;
use idem::sqlx::{MySqlStore, PgStore, SqliteStore};
use idem::{Fingerprint, Key, Options, Store, idempotent};
use mysql::MySqlSql;
use postgres::PgSql;
use sqlite::SqliteSql;
use sqlx::mysql::MySql;
use sqlx::pool::PoolOptions;
use sqlx::postgres::Postgres;
use sqlx::sqlite::Sqlite;
use sqlx::{AssertSqlSafe, Database, Executor, IntoArguments, Pool};
use std::future::Future;
use support::measure::{self, Mode, Protocol, Timing};
use support::paired;
use support::payload::{REPLAYED, Receipt, Transfer, fresh_requests, request, settle};
use tokio::runtime::Runtime;

/// Pool size, the same for both sides: the 16 tasks plus connections still on their way
/// back to the pool (sqlx pings each released connection before it is idle again).
const POOL: u32 = 24;

const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

// ---------------------------------------------------------------------------------------
// The call through idem (the baseline's is `baseline::Baseline`).

#[idempotent(key = req.request_id, scope = req.user_id, store = store)]
async fn transfer_sqlite(store: &SqliteStore, req: Transfer) -> Result<Receipt, idem::Error> {
    Ok(settle(&req))
}

#[idempotent(key = req.request_id, scope = req.user_id, store = store)]
async fn transfer_pg(store: &PgStore, req: Transfer) -> Result<Receipt, idem::Error> {
    Ok(settle(&req))
}

#[idempotent(key = req.request_id, scope = req.user_id, store = store)]
async fn transfer_mysql(store: &MySqlStore, req: Transfer) -> Result<Receipt, idem::Error> {
    Ok(settle(&req))
}

/// idem's side on one backend.
trait Idem: Protocol {
    type Db: Database;

    /// The store on `pool` in `table`, migrated.
    fn migrated(pool: Pool<Self::Db>, table: &str) -> impl Future<Output = Self>;

    /// The same store with claims and completes coalesced.
    fn coalesced(self) -> Self;

    /// `rounds` batches of `size` fresh requests through `Idempotent::run_batch`.
    fn batches(&self, rounds: usize, size: usize) -> impl Future<Output = ()> + Send;
}

/// The function `run_batch` runs in the benches: the transfer, with the macro's defaults.
fn transfers() -> Idempotent<Receipt, idem::Error> {
    Idempotent::new(Options::new("sql::transfer_batch"))
}

/// `rounds` batches of `size` fresh transfers through `run_batch` on `store`, each result
/// checked.
async fn batches<S: Store + ?Sized>(store: &S, rounds: usize, size: usize) {
    let transfers = transfers();
    for _ in 0..rounds {
        let requests = fresh_requests(size as u64);
        let calls = requests.iter().map(|req| {
            let key = Key::scoped("sql::transfer_batch", &req.user_id, &*req.request_id).unwrap();
            let fingerprint = Fingerprint::of(req).unwrap();
            (key, fingerprint, async move { Ok(settle(req)) })
        });
        let results = transfers.run_batch(store, calls.collect()).await;
        for (req, result) in requests.iter().zip(results) {
            assert_eq!(result.unwrap(), settle(req));
        }
    }
}

macro_rules! idem_protocol {
    ($name:ident, $store:ident, $db:ty, $call:ident) => {
        #[derive(Clone)]
        struct $name($store);

        impl Protocol for $name {
            async fn fresh(&self, req: Transfer) -> Receipt {
                $call(&self.0, req).await.unwrap()
            }
            async fn replay(&self, req: Transfer) -> Receipt {
                $call(&self.0, req).await.unwrap()
            }
        }

        impl Idem for $name {
            type Db = $db;

            async fn migrated(pool: Pool<$db>, table: &str) -> Self {
                let store = $store::new(pool).with_table(table).unwrap();
                store.migrate().await.unwrap();
                $name(store)
            }

            fn coalesced(self) -> Self {
                $name(self.0.with_coalescing(true))
            }

            async fn batches(&self, rounds: usize, size: usize) {
                batches(&self.0, rounds, size).await
            }
        }
    };
}

idem_protocol!(IdemSqlite, SqliteStore, Sqlite, transfer_sqlite);
idem_protocol!(IdemPg, PgStore, Postgres, transfer_pg);
idem_protocol!(IdemMySql, MySqlStore, MySql, transfer_mysql);

// ---------------------------------------------------------------------------------------
// Every bench of one backend.

/// `idem` (in `table`) against the `baseline` (in `base_table`, of the same shape: made by
/// the store's own migration), both on `pool`, with criterion; then the paired
/// measurements, with the dialect's hand-written variants for the diagnosis, each in the
/// modes where it differs from the baseline.
fn bench_backend<D: Dialect, I: Idem<Db = D::Db>>(
    c: &mut Criterion,
    backend: &str,
    rt: &Runtime,
    pool: &Pool<D::Db>,
    [table, base_table]: [&str; 2],
) where
    Baseline<D>: Protocol,
{
    let idem = rt.block_on(async {
        I::migrated(pool.clone(), base_table).await;
        I::migrated(pool.clone(), table).await
    });
    let baseline = Baseline::<D>::new(pool.clone(), base_table);
    let variants: Vec<_> = D::VARIANTS
        .iter()
        .map(|&(name, variant, modes)| (name, baseline.variant(variant), modes))
        .collect();

    // Record the replayed key on both tables, and check that every side agrees.
    rt.block_on(async {
        let recorded = idem.fresh(request(REPLAYED)).await;
        assert_eq!(baseline.fresh(request(REPLAYED)).await, recorded);
        assert_eq!(idem.replay(request(REPLAYED)).await, recorded);
        assert_eq!(baseline.replay(request(REPLAYED)).await, recorded);
        for (_, v, _) in &variants {
            assert_eq!(v.replay(request(REPLAYED)).await, recorded);
            let req = fresh_requests(1).remove(0);
            assert_eq!(v.fresh(req.clone()).await, settle(&req));
        }
    });

    for (group, mode) in Mode::GROUPS {
        let mut group = c.benchmark_group(format!("{backend}/{group}"));
        group.throughput(Throughput::Elements(1));
        let how = (mode, Timing::Wall);
        measure::bench(&mut group, "idem", rt, how, || idem.clone());
        measure::bench(&mut group, "baseline", rt, how, || baseline.clone());
        group.finish();
    }

    // The per-call protocol against coalescing (`coalesce.rs`), each in a table of its own.
    let (per_call, coalesced) = rt.block_on(async {
        let per_call = I::migrated(pool.clone(), &format!("{table}_pc")).await;
        let coalesced = I::migrated(pool.clone(), &format!("{table}_co")).await;
        (per_call, coalesced.coalesced())
    });
    coalesce::bench(c, backend, rt, (&per_call, &coalesced));
    // Per call, coalesced, `run_batch` and the same statements by hand, each in a new table.
    let [per_call, coalesced, batched, by_hand] =
        ["cp", "cc", "cb", "bh"].map(|side| format!("{table}_{side}"));
    let (per_call, coalesced, batched) = rt.block_on(async {
        I::migrated(pool.clone(), &by_hand).await;
        (
            I::migrated(pool.clone(), &per_call).await,
            I::migrated(pool.clone(), &coalesced).await.coalesced(),
            I::migrated(pool.clone(), &batched).await,
        )
    });
    coalesce::ceiling(
        rt,
        backend,
        (&per_call, &coalesced),
        |rounds| {
            let batched = batched.clone();
            async move { batched.batches(rounds, coalesce::BATCH).await }
        },
        |rounds| {
            let (pool, table) = (pool.clone(), by_hand.clone());
            async move { D::batches_by_hand(&pool, &table, (rounds, coalesce::BATCH)).await }
        },
    );

    let base = ("baseline", &baseline);
    for (group, mode) in Mode::GROUPS {
        let label = format!("{backend}/{group}");
        if !paired::wanted(&label) {
            continue;
        }
        let how = (mode, Timing::Wall);
        paired::paired(rt, &label, ("idem", &idem), base, how);
        for (name, v, modes) in &variants {
            if modes.contains(&mode) {
                paired::paired(rt, &label, ("idem", &idem), (name, v), how);
                paired::paired(rt, &label, (name, v), base, how);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Setup and teardown per backend.

fn runtime() -> Runtime {
    // One runtime for every bench: a pool's sockets belong to the runtime that opened them.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The pool settings both sides share.
fn pool_options<DB: Database>() -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(POOL)
        .test_before_acquire(false)
}

/// A name no other run uses (a plain identifier, short enough for every backend).
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{:x}", std::process::id(), nanos & 0xffff_ffff)
}

fn bench_sqlite(c: &mut Criterion) {
    support::payload::sizes("sql");
    let rt = runtime();
    let path = std::env::temp_dir().join(format!("{}.sqlite", unique("idem_bench")));
    let pool = rt
        .block_on(pool_options().connect_with(sqlite::options(&path)))
        .unwrap();
    let tables = ["idem_records", "baseline_records"];
    bench_backend::<SqliteSql, IdemSqlite>(c, "sqlite", &rt, &pool, tables);
    rt.block_on(pool.close());
    sqlite::remove(path);
}

/// [`bench_backend`] on the server at `$var` (default `url`) in tables of the run's own,
/// dropped at the end; skipped with a note if the server cannot be reached.
fn bench_server<D: Dialect, I: Idem<Db = D::Db>>(
    c: &mut Criterion,
    (backend, server): (&str, &str),
    var: &str,
    url: &str,
) where
    Baseline<D>: Protocol,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
{
    let rt = runtime();
    let url = std::env::var(var)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| url.to_owned());
    let pool = match rt.block_on(pool_options().connect(&url)) {
        Ok(pool) => pool,
        Err(e) => return eprintln!("note: SKIPPED the {server} benches: cannot reach {url}: {e}"),
    };
    let table = unique("idem_bench");
    let base_table = format!("{table}_base");
    bench_backend::<D, I>(c, backend, &rt, &pool, [&table, &base_table]);
    rt.block_on(async {
        let coalesce_tables =
            ["pc", "co", "cp", "cc", "cb", "bh"].map(|side| format!("{table}_{side}"));
        for t in [&table, &base_table].into_iter().chain(&coalesce_tables) {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    });
}

fn bench_postgres(c: &mut Criterion) {
    let names = ("postgres", "PostgreSQL");
    bench_server::<PgSql, IdemPg>(c, names, "IDEM_TEST_POSTGRES_URL", POSTGRES_URL);
}

fn bench_mysql(c: &mut Criterion) {
    let names = ("mysql", "MySQL/MariaDB");
    bench_server::<MySqlSql, IdemMySql>(c, names, "IDEM_TEST_MYSQL_URL", MYSQL_URL);
}

criterion_group! {
    name = benches;
    config = paired::criterion();
    targets = bench_sqlite, bench_postgres, bench_mysql
}
criterion_main!(benches);
