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
//! Then, unless `IDEM_BENCH_PAIRED=0`, paired measurements print (to stderr) the same
//! comparisons interleaved round by round, which is what resolves a 10% difference on a
//! machine whose other users come and go, with this process's CPU time per call, and
//! compare hand-written variants that locate the cost: `read_first_1conn` (a `SELECT` by
//! key before the insert, on one acquired connection: a fresh key when a store reads
//! first), `insert_first` (the replay in the other order: the insert-if-absent, then the
//! `SELECT`: a replay when a store inserts first), `store_read` (SQLite, MySQL: the
//! replay with the store's own read statement) and, on PostgreSQL, `claim_cte` (the
//! one-statement claim `PgStore` used up to 7eec192: the insert and a read of the row in
//! one CTE, fresh and replay, by hand).
//!
//! Both sides compute a SHA-256 key digest and a 256-bit fingerprint of the request, bind
//! the same columns and share one pool: `test_before_acquire(false)` (the default ping on
//! acquire costs 35–45% of a replay) and room for 16 tasks. Each run makes its own tables
//! (SQLite: its own file) and drops them at the end.
//!
//! PostgreSQL and MySQL/MariaDB are reached at `IDEM_TEST_POSTGRES_URL` /
//! `IDEM_TEST_MYSQL_URL` (as the tests), by default this machine's loopback servers; a
//! backend that cannot be reached is skipped with a note.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use idem::idempotent;
use idem::sqlx::{MySqlStore, PgStore, SqliteStore};
use sha2::{Digest, Sha256};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, SqlStr};
use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Concurrent tasks in the throughput bench.
const TASKS: u64 = 16;
/// Pool size, the same for both sides: the 16 tasks plus connections still on their way
/// back to the pool (sqlx pings each released connection before it is idle again).
const POOL: u32 = 24;
const TTL: Duration = Duration::from_secs(24 * 60 * 60);
const LEASE: Duration = Duration::from_secs(30);
/// The baseline's namespace, as idem's is the function's path.
const NAMESPACE: &str = "sql::transfer";

const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

// ---------------------------------------------------------------------------------------
// The call, the same on both sides.

#[path = "support/payload.rs"]
mod payload;
use payload::{Receipt, Transfer, request, settle};

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

/// One way to make the call: through idem, or by hand.
trait Protocol: Clone + Send + Sync + 'static {
    /// A call whose key was never seen: claim, run the body, record its output.
    fn fresh(&self, req: Transfer) -> impl Future<Output = Receipt> + Send;
    /// A call whose key is recorded: the recorded output, the body does not run.
    fn replay(&self, req: Transfer) -> impl Future<Output = Receipt> + Send;
}

macro_rules! idem_protocol {
    ($name:ident, $store:ty, $call:ident) => {
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
    };
}

idem_protocol!(IdemSqlite, SqliteStore, transfer_sqlite);
idem_protocol!(IdemPg, PgStore, transfer_pg);
idem_protocol!(IdemMySql, MySqlStore, transfer_mysql);

// ---------------------------------------------------------------------------------------
// The hand-written baseline: what one would write without idem.

/// What the baseline computes before it talks to the database, as idem does: the key's
/// digest, a readable preview, the request's fingerprint, a fencing token.
struct Prepared {
    digest: [u8; 32],
    preview: String,
    fingerprint: [u8; 32],
    token: i64,
}

static TOKENS: AtomicI64 = AtomicI64::new(1);

fn prepare(req: &Transfer) -> Prepared {
    let mut h = Sha256::new();
    h.update(NAMESPACE.as_bytes());
    h.update(req.user_id.to_le_bytes());
    h.update((req.request_id.len() as u64).to_le_bytes());
    h.update(req.request_id.as_bytes());
    let bytes = bincode::serde::encode_to_vec(req, bincode::config::standard()).unwrap();
    Prepared {
        digest: h.finalize().into(),
        preview: format!("{}/{}", req.user_id, req.request_id),
        fingerprint: Sha256::digest(&bytes).into(),
        token: TOKENS.fetch_add(1, Ordering::Relaxed),
    }
}

fn encode(receipt: &Receipt) -> Vec<u8> {
    bincode::serde::encode_to_vec(receipt, bincode::config::standard()).unwrap()
}

/// The replay's checks: same request, decodable output.
fn replayed(p: &Prepared, fingerprint: &[u8], output: &[u8]) -> Receipt {
    assert_eq!(fingerprint, p.fingerprint, "payload mismatch");
    bincode::serde::decode_from_slice(output, bincode::config::standard())
        .unwrap()
        .0
}

/// The columns of a store's read, decoded by name as the store does: a completed, live
/// record's fingerprint and output.
fn store_row<R: Row>(row: &R, live: bool) -> (Vec<u8>, Vec<u8>)
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    assert_eq!(row.get::<i64, _>("state"), 1, "completed");
    assert_eq!(row.get::<Option<i64>, _>("outcome"), Some(0));
    assert!(live && row.get::<i64, _>("remaining_ms") > 0);
    let output: Option<Vec<u8>> = row.get("output");
    (row.get("fingerprint"), output.expect("an output"))
}

/// A statement on `table`, built once (a cheaply cloned `Arc<str>`).
fn sql(table: &str, template: &str) -> SqlStr {
    // Bench tables are named by `unique`: plain identifiers.
    AssertSqlSafe(Arc::<str>::from(template.replace("{t}", table))).into_sql_str()
}

/// Which hand-written protocol a baseline runs.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// The minimal protocol: insert-if-absent, update; replay = one `SELECT`.
    Minimal,
    /// A `SELECT` by key before the insert, on one connection acquired for both (how the
    /// stores claim while they read first: the cost of a fresh key then). Replay: as
    /// `Minimal`.
    ReadFirstOneConn,
    /// The other order, for the replay: the insert-if-absent first (which finds the key),
    /// then the `SELECT`, on one connection. Fresh: as `Minimal`.
    InsertFirst,
    /// PostgreSQL: the one-statement claim (insert and read in one CTE) `PgStore` used up
    /// to 7eec192, instead of the plain insert.
    ClaimCte,
    /// SQLite, MySQL: the replay with the store's own read statement (all the columns a
    /// claim reads, and the deadline arithmetic), decoded as the store does.
    StoreRead,
}

// --- SQLite

#[derive(Clone)]
struct BaseSqlite {
    pool: SqlitePool,
    sql: Arc<SqliteSql>,
    variant: Variant,
}

struct SqliteSql {
    insert: SqlStr,
    complete: SqlStr,
    select: SqlStr,
    /// `SqliteStore`'s read, verbatim.
    store_read: SqlStr,
}

/// The database clock as integer milliseconds, as `SqliteStore` computes it.
const SQLITE_NOW: &str = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

impl SqliteSql {
    fn new(t: &str) -> Self {
        let s = |template: &str| sql(t, &template.replace("{now}", SQLITE_NOW));
        SqliteSql {
            insert: s(
                "INSERT INTO {t} (key_digest, namespace, key_preview, fingerprint, state, \
                   token, lease_until, expires_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, {now} + ?6, {now} + ?6, {now}) \
                 ON CONFLICT (key_digest) DO NOTHING",
            ),
            complete: s(
                "UPDATE {t} SET state = 1, outcome = 0, output = ?3, lease_until = NULL, \
                   expires_at = {now} + ?4 \
                 WHERE key_digest = ?1 AND token = ?2 AND state = 0",
            ),
            select: s("SELECT fingerprint, output FROM {t} \
                 WHERE key_digest = ?1 AND state = 1 AND expires_at > {now}"),
            store_read: s("SELECT state, fingerprint, outcome, output, \
                        expires_at > {now} AS live, expires_at - {now} AS remaining_ms \
                 FROM {t} WHERE key_digest = ?1"),
        }
    }
}

impl Protocol for BaseSqlite {
    async fn fresh(&self, req: Transfer) -> Receipt {
        let p = prepare(&req);
        let insert = || {
            sqlx::query(self.sql.insert.clone())
                .bind(&p.digest[..])
                .bind(NAMESPACE)
                .bind(&p.preview)
                .bind(&p.fingerprint[..])
                .bind(p.token)
                .bind(LEASE.as_millis() as i64)
        };
        let read = || sqlx::query(self.sql.select.clone()).bind(&p.digest[..]);
        let claimed = match self.variant {
            Variant::ReadFirstOneConn => {
                let mut conn = self.pool.acquire().await.unwrap();
                let found = read().fetch_optional(&mut *conn).await.unwrap();
                assert!(found.is_none(), "fresh keys are new");
                insert().execute(&mut *conn).await.unwrap()
            }
            _ => insert().execute(&self.pool).await.unwrap(),
        };
        assert_eq!(claimed.rows_affected(), 1, "fresh keys are new");
        let receipt = settle(&req);
        let done = sqlx::query(self.sql.complete.clone())
            .bind(&p.digest[..])
            .bind(p.token)
            .bind(encode(&receipt))
            .bind(TTL.as_millis() as i64)
            .execute(&self.pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1, "fenced update");
        receipt
    }

    async fn replay(&self, req: Transfer) -> Receipt {
        let p = prepare(&req);
        let read = sqlx::query_as(self.sql.select.clone()).bind(&p.digest[..]);
        let (fingerprint, output): (Vec<u8>, Vec<u8>) = match self.variant {
            Variant::InsertFirst => {
                let mut conn = self.pool.acquire().await.unwrap();
                let claimed = sqlx::query(self.sql.insert.clone())
                    .bind(&p.digest[..])
                    .bind(NAMESPACE)
                    .bind(&p.preview)
                    .bind(&p.fingerprint[..])
                    .bind(p.token)
                    .bind(LEASE.as_millis() as i64)
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                assert_eq!(claimed.rows_affected(), 0, "a recorded key");
                read.fetch_one(&mut *conn).await.unwrap()
            }
            Variant::StoreRead => {
                let row = sqlx::query(self.sql.store_read.clone())
                    .bind(&p.digest[..])
                    .fetch_one(&self.pool)
                    .await
                    .unwrap();
                store_row(&row, row.get::<bool, _>("live"))
            }
            _ => read.fetch_one(&self.pool).await.unwrap(),
        };
        replayed(&p, &fingerprint, &output)
    }
}

// --- PostgreSQL

#[derive(Clone)]
struct BasePg {
    pool: PgPool,
    sql: Arc<PgSql>,
    variant: Variant,
}

struct PgSql {
    insert: SqlStr,
    /// `PgStore`'s claim statement, verbatim.
    claim_cte: SqlStr,
    complete: SqlStr,
    select: SqlStr,
}

impl PgSql {
    fn new(t: &str) -> Self {
        PgSql {
            insert: sql(
                t,
                "INSERT INTO {t} (key_digest, namespace, key_preview, fingerprint, state, token, \
                                  lease_until, expires_at) \
                 VALUES ($1, $2, $3, $4, 0, $5, now() + $6, now() + $6) \
                 ON CONFLICT (key_digest) DO NOTHING",
            ),
            claim_cte: sql(
                t,
                "WITH ins AS ( \
                   INSERT INTO {t} (key_digest, namespace, key_preview, fingerprint, state, token, \
                                    lease_until, expires_at) \
                   VALUES ($1, $2, $3, $4, 0, $5, now() + $6, now() + $6) \
                   ON CONFLICT (key_digest) DO NOTHING \
                   RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM ins) AS claimed, \
                        r.state::int8 AS state, r.fingerprint, r.outcome::int8 AS outcome, r.output, \
                        r.expires_at > now() AS live, \
                        (extract(epoch FROM r.expires_at - now()) * 1000)::int8 AS remaining_ms \
                 FROM (SELECT 1) AS one LEFT JOIN {t} AS r ON r.key_digest = $1",
            ),
            complete: sql(
                t,
                "UPDATE {t} SET state = 1, outcome = 0, output = $3, lease_until = NULL, \
                   expires_at = now() + $4 \
                 WHERE key_digest = $1 AND token = $2 AND state = 0",
            ),
            select: sql(
                t,
                "SELECT fingerprint, output FROM {t} \
                 WHERE key_digest = $1 AND state = 1 AND expires_at > now()",
            ),
        }
    }
}

impl BasePg {
    /// The store's claim statement by hand: `Some((fingerprint, output))` of a recorded
    /// key, `None` when this call inserted the row.
    async fn claim_cte(&self, p: &Prepared) -> Option<(Vec<u8>, Vec<u8>)> {
        let row = sqlx::query(self.sql.claim_cte.clone())
            .bind(&p.digest[..])
            .bind(NAMESPACE)
            .bind(&p.preview)
            .bind(&p.fingerprint[..])
            .bind(p.token)
            .bind(LEASE)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        if row.get::<bool, _>("claimed") {
            return None;
        }
        assert_eq!(row.get::<Option<i64>, _>("state"), Some(1), "completed");
        assert!(row.get::<bool, _>("live"));
        assert_eq!(row.get::<Option<i64>, _>("outcome"), Some(0));
        Some((row.get("fingerprint"), row.get("output")))
    }
}

impl Protocol for BasePg {
    async fn fresh(&self, req: Transfer) -> Receipt {
        let p = prepare(&req);
        let insert = || {
            sqlx::query(self.sql.insert.clone())
                .bind(&p.digest[..])
                .bind(NAMESPACE)
                .bind(&p.preview)
                .bind(&p.fingerprint[..])
                .bind(p.token)
                .bind(LEASE)
        };
        let read = || sqlx::query(self.sql.select.clone()).bind(&p.digest[..]);
        match self.variant {
            Variant::ClaimCte => {
                assert!(self.claim_cte(&p).await.is_none(), "fresh keys are new");
            }
            Variant::ReadFirstOneConn => {
                let mut conn = self.pool.acquire().await.unwrap();
                let found = read().fetch_optional(&mut *conn).await.unwrap();
                assert!(found.is_none(), "fresh keys are new");
                let claimed = insert().execute(&mut *conn).await.unwrap();
                assert_eq!(claimed.rows_affected(), 1, "fresh keys are new");
            }
            _ => {
                let claimed = insert().execute(&self.pool).await.unwrap();
                assert_eq!(claimed.rows_affected(), 1, "fresh keys are new");
            }
        }
        let receipt = settle(&req);
        let done = sqlx::query(self.sql.complete.clone())
            .bind(&p.digest[..])
            .bind(p.token)
            .bind(encode(&receipt))
            .bind(TTL)
            .execute(&self.pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1, "fenced update");
        receipt
    }

    async fn replay(&self, req: Transfer) -> Receipt {
        let p = prepare(&req);
        let read = sqlx::query_as(self.sql.select.clone()).bind(&p.digest[..]);
        let (fingerprint, output) = match self.variant {
            Variant::ClaimCte => self.claim_cte(&p).await.expect("a recorded key"),
            Variant::InsertFirst => {
                let mut conn = self.pool.acquire().await.unwrap();
                let claimed = sqlx::query(self.sql.insert.clone())
                    .bind(&p.digest[..])
                    .bind(NAMESPACE)
                    .bind(&p.preview)
                    .bind(&p.fingerprint[..])
                    .bind(p.token)
                    .bind(LEASE)
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                assert_eq!(claimed.rows_affected(), 0, "a recorded key");
                read.fetch_one(&mut *conn).await.unwrap()
            }
            _ => read.fetch_one(&self.pool).await.unwrap(),
        };
        replayed(&p, &fingerprint, &output)
    }
}

// --- MySQL / MariaDB

#[derive(Clone)]
struct BaseMySql {
    pool: MySqlPool,
    sql: Arc<MySqlSql>,
    variant: Variant,
}

struct MySqlSql {
    insert: SqlStr,
    complete: SqlStr,
    select: SqlStr,
    /// `MySqlStore`'s read, verbatim.
    store_read: SqlStr,
}

impl MySqlSql {
    fn new(t: &str) -> Self {
        MySqlSql {
            insert: sql(
                t,
                "INSERT IGNORE INTO {t} (key_digest, namespace, key_preview, fingerprint, state, \
                   token, lease_until, expires_at, created_at) \
                 VALUES (?, ?, ?, ?, 0, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                   UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, UTC_TIMESTAMP(6))",
            ),
            complete: sql(
                t,
                "UPDATE {t} SET state = 1, outcome = 0, output = ?, lease_until = NULL, \
                   expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE key_digest = ? AND token = ? AND state = 0",
            ),
            select: sql(
                t,
                "SELECT fingerprint, output FROM {t} \
                 WHERE key_digest = ? AND state = 1 AND expires_at > UTC_TIMESTAMP(6)",
            ),
            store_read: sql(
                t,
                "SELECT state, fingerprint, outcome, output, \
                   expires_at > UTC_TIMESTAMP(6) AS live, \
                   TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) DIV 1000 AS remaining_ms \
                 FROM {t} WHERE key_digest = ?",
            ),
        }
    }
}

impl Protocol for BaseMySql {
    async fn fresh(&self, req: Transfer) -> Receipt {
        let p = prepare(&req);
        let lease = LEASE.as_micros() as i64;
        let insert = || {
            sqlx::query(self.sql.insert.clone())
                .bind(&p.digest[..])
                .bind(NAMESPACE)
                .bind(&p.preview)
                .bind(&p.fingerprint[..])
                .bind(p.token)
                .bind(lease)
                .bind(lease)
        };
        let read = || sqlx::query(self.sql.select.clone()).bind(&p.digest[..]);
        let claimed = match self.variant {
            Variant::ReadFirstOneConn => {
                let mut conn = self.pool.acquire().await.unwrap();
                let found = read().fetch_optional(&mut *conn).await.unwrap();
                assert!(found.is_none(), "fresh keys are new");
                insert().execute(&mut *conn).await.unwrap()
            }
            _ => insert().execute(&self.pool).await.unwrap(),
        };
        assert_eq!(claimed.rows_affected(), 1, "fresh keys are new");
        let receipt = settle(&req);
        let done = sqlx::query(self.sql.complete.clone())
            .bind(encode(&receipt))
            .bind(TTL.as_micros() as i64)
            .bind(&p.digest[..])
            .bind(p.token)
            .execute(&self.pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1, "fenced update");
        receipt
    }

    async fn replay(&self, req: Transfer) -> Receipt {
        let p = prepare(&req);
        let read = sqlx::query_as(self.sql.select.clone()).bind(&p.digest[..]);
        let (fingerprint, output): (Vec<u8>, Vec<u8>) = match self.variant {
            Variant::InsertFirst => {
                let lease = LEASE.as_micros() as i64;
                let mut conn = self.pool.acquire().await.unwrap();
                let claimed = sqlx::query(self.sql.insert.clone())
                    .bind(&p.digest[..])
                    .bind(NAMESPACE)
                    .bind(&p.preview)
                    .bind(&p.fingerprint[..])
                    .bind(p.token)
                    .bind(lease)
                    .bind(lease)
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                assert_eq!(claimed.rows_affected(), 0, "a recorded key");
                read.fetch_one(&mut *conn).await.unwrap()
            }
            Variant::StoreRead => {
                let row = sqlx::query(self.sql.store_read.clone())
                    .bind(&p.digest[..])
                    .fetch_one(&self.pool)
                    .await
                    .unwrap();
                store_row(&row, row.get::<i64, _>("live") != 0)
            }
            _ => read.fetch_one(&self.pool).await.unwrap(),
        };
        replayed(&p, &fingerprint, &output)
    }
}

// ---------------------------------------------------------------------------------------
// The measurements, the same for every protocol.

/// Distinct keys across every sample, side and backend of the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn fresh_requests(n: u64) -> Vec<Transfer> {
    let start = NEXT_ID.fetch_add(n, Ordering::Relaxed);
    (start..start + n).map(request).collect()
}

/// The key every replay bench reads (recorded first, once per table).
const REPLAYED: u64 = u64::MAX;

/// Which calls a measurement makes.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Sequential calls with fresh keys.
    Fresh,
    /// Sequential calls with the recorded key.
    Replay,
    /// `TASKS` tasks, each making sequential calls with fresh keys.
    Tasks,
}

/// CPU time of this whole process (every thread: the runtime's, and sqlx's SQLite worker
/// threads, so for SQLite it includes the database's own work), where it can be read.
fn process_cpu() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        use rustix::time::{ClockId, clock_gettime};
        let t = clock_gettime(ClockId::ProcessCPUTime);
        Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// What one block of calls cost.
struct Sample {
    wall: Duration,
    /// This process's CPU time over the block.
    cpu: Option<Duration>,
    calls: u64,
}

impl Sample {
    fn wall_us(&self) -> f64 {
        self.wall.as_secs_f64() * 1e6 / self.calls as f64
    }

    fn cpu_us(&self) -> f64 {
        self.cpu
            .map_or(f64::NAN, |c| c.as_secs_f64() * 1e6 / self.calls as f64)
    }
}

/// About `calls` calls of `p` in `mode`, timed, and this process's CPU time over them (the
/// 16 tasks round up to a multiple of 16). Requests are built before the clocks start.
fn sample<P: Protocol>(rt: &Runtime, p: &P, mode: Mode, calls: u64) -> Sample {
    let cpu = process_cpu();
    let (wall, calls) = run(rt, p, mode, calls);
    Sample {
        wall,
        cpu: process_cpu().zip(cpu).map(|(end, start)| end - start),
        calls,
    }
}

/// About `calls` calls of `p` in `mode`: the time they took, and how many they were (the
/// 16 tasks round up to a multiple of 16). Requests are built before the clock starts.
fn run<P: Protocol>(rt: &Runtime, p: &P, mode: Mode, calls: u64) -> (Duration, u64) {
    rt.block_on(async {
        match mode {
            Mode::Fresh | Mode::Replay => {
                let reqs = match mode {
                    Mode::Fresh => fresh_requests(calls),
                    _ => vec![request(REPLAYED); calls as usize],
                };
                let start = Instant::now();
                for req in reqs {
                    black_box(match mode {
                        Mode::Fresh => p.fresh(req).await,
                        _ => p.replay(req).await,
                    });
                }
                (start.elapsed(), calls)
            }
            Mode::Tasks => {
                let per_task = calls.div_ceil(TASKS);
                let batches: Vec<Vec<Transfer>> =
                    (0..TASKS).map(|_| fresh_requests(per_task)).collect();
                let start = Instant::now();
                let handles: Vec<_> = batches
                    .into_iter()
                    .map(|reqs| {
                        let p = p.clone();
                        tokio::spawn(async move {
                            for req in reqs {
                                black_box(p.fresh(req).await);
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.await.unwrap();
                }
                (start.elapsed(), per_task * TASKS)
            }
        }
    })
}

/// One criterion bench: `iter_custom`, timed inside the runtime.
fn bench<P: Protocol>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &Runtime,
    p: &P,
    mode: Mode,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (elapsed, calls) = run(rt, p, mode, iters);
            // Per requested iteration (16 tasks may make a few more calls than asked).
            elapsed.mul_f64(iters as f64 / calls as f64)
        })
    });
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Rounds of a paired measurement, and the time each side gets per round.
const ROUNDS: usize = 16;
const ROUND_SIDE: Duration = Duration::from_millis(100);

/// `a` against `b`, interleaved: rounds of one block of calls of each, in ABBA order, so
/// that load from other processes falls on both sides alike (criterion's groups run all
/// of one side's samples, then all of the other's). Prints the medians of the time per
/// call and of the per-round ratios a/b, with the ratios' interquartile range, and the
/// medians of this process's CPU time per call (the client's work; for SQLite also the
/// database's).
fn paired<A: Protocol, B: Protocol>(
    rt: &Runtime,
    label: &str,
    (a_name, a): (&str, &A),
    (b_name, b): (&str, &B),
    mode: Mode,
) {
    // Size the blocks by a short first one of each (which also warms both up).
    let probe = sample(rt, a, mode, 32)
        .wall_us()
        .max(sample(rt, b, mode, 32).wall_us());
    let calls = ((ROUND_SIDE.as_secs_f64() * 1e6 / probe) as u64).clamp(16, 5_000);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            xs.push(sample(rt, a, mode, calls));
            ys.push(sample(rt, b, mode, calls));
        } else {
            ys.push(sample(rt, b, mode, calls));
            xs.push(sample(rt, a, mode, calls));
        }
    }
    let ratios: Vec<f64> = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| x.wall_us() / y.wall_us())
        .collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let (lo, hi) = (sorted[ROUNDS / 4], sorted[ROUNDS - 1 - ROUNDS / 4]);
    let med = |s: &[Sample], f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
    eprintln!(
        "paired {label:<22} {a_name:>16} {:>8.1} µs  {b_name:>16} {:>8.1} µs  \
         ratio {:.3} (IQR {lo:.3}–{hi:.3}; {ROUNDS} rounds × {calls} calls)  \
         cpu {:.1} / {:.1} µs",
        med(&xs, Sample::wall_us),
        med(&ys, Sample::wall_us),
        median(ratios),
        med(&xs, Sample::cpu_us),
        med(&ys, Sample::cpu_us),
    );
}

/// The modes in which a variant differs from the baseline.
const WRITES: &[Mode] = &[Mode::Fresh, Mode::Tasks];
const REPLAYS: &[Mode] = &[Mode::Replay];
const ALL: &[Mode] = &[Mode::Fresh, Mode::Replay, Mode::Tasks];

/// Whether to make the paired measurement `label`: only when criterion measures (`cargo
/// bench`, not `--test`, `--list` or `--profile-time`), unless `IDEM_BENCH_PAIRED=0`, and
/// when a criterion filter is given, only if `label` contains it or it contains `label`
/// (plain text: `postgres`, `replay`, `mysql/fresh_16_tasks`).
fn paired_wanted(label: &str) -> bool {
    /// Criterion options that take a value (the value is not a filter).
    const VALUED: &[&str] = &[
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--color",
        "--profile-time",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
        "--format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| {
        args.iter()
            .any(|a| a == f || a.starts_with(&format!("{f}=")))
    };
    if !flag("--bench") || flag("--test") || flag("--list") || flag("--profile-time") {
        return false;
    }
    if std::env::var("IDEM_BENCH_PAIRED").as_deref() == Ok("0") {
        return false;
    }
    let mut filter = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg.starts_with('-') {
            if VALUED.contains(&arg.as_str()) {
                rest.next();
            }
        } else {
            filter = Some(arg.as_str());
        }
    }
    filter.is_none_or(|f| label.contains(f) || f.contains(label))
}

/// Every bench of one backend: `idem` against `baseline` with criterion, then the paired
/// measurements, with the hand-written `variants` for the diagnosis, each in the modes
/// where it differs from the baseline.
fn bench_backend<I: Protocol, B: Protocol>(
    c: &mut Criterion,
    backend: &str,
    rt: &Runtime,
    idem: &I,
    baseline: &B,
    variants: &[(&str, B, &[Mode])],
) {
    // Record the replayed key on both tables, and check that every side agrees.
    rt.block_on(async {
        let recorded = idem.fresh(request(REPLAYED)).await;
        assert_eq!(baseline.fresh(request(REPLAYED)).await, recorded);
        assert_eq!(idem.replay(request(REPLAYED)).await, recorded);
        assert_eq!(baseline.replay(request(REPLAYED)).await, recorded);
        for (_, v, _) in variants {
            assert_eq!(v.replay(request(REPLAYED)).await, recorded);
            let req = fresh_requests(1).remove(0);
            assert_eq!(v.fresh(req.clone()).await, settle(&req));
        }
    });

    for (group, mode) in [
        ("fresh", Mode::Fresh),
        ("replay", Mode::Replay),
        ("fresh_16_tasks", Mode::Tasks),
    ] {
        let mut group = c.benchmark_group(format!("{backend}/{group}"));
        group.throughput(Throughput::Elements(1));
        bench(&mut group, "idem", rt, idem, mode);
        bench(&mut group, "baseline", rt, baseline, mode);
        group.finish();
    }

    let base = ("baseline", baseline);
    for (group, mode) in [
        ("fresh", Mode::Fresh),
        ("replay", Mode::Replay),
        ("fresh_16_tasks", Mode::Tasks),
    ] {
        let label = format!("{backend}/{group}");
        if !paired_wanted(&label) {
            continue;
        }
        paired(rt, &label, ("idem", idem), base, mode);
        for (name, v, modes) in variants {
            if !modes.contains(&mode) {
                continue;
            }
            paired(rt, &label, ("idem", idem), (name, v), mode);
            paired(rt, &label, (name, v), base, mode);
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

/// A table name no other run uses (a plain identifier, short enough for every backend).
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{:x}", std::process::id(), nanos & 0xffff_ffff)
}

fn url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn skipped(backend: &str, url: &str, error: impl std::fmt::Display) {
    eprintln!("note: SKIPPED the {backend} benches: cannot reach {url}: {error}");
}

fn sizes() {
    let req = request(0);
    let req_len = bincode::serde::encode_to_vec(&req, bincode::config::standard())
        .unwrap()
        .len();
    let out_len = encode(&settle(&req)).len();
    eprintln!("sql bench: request {req_len} B, output {out_len} B (bincode)");
}

fn bench_sqlite(c: &mut Criterion) {
    sizes();
    let rt = runtime();
    let path: PathBuf = std::env::temp_dir().join(format!("{}.sqlite", unique("idem_bench")));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(60));
    let (idem, baseline, variants) = rt.block_on(async {
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .unwrap();
        let store = SqliteStore::new(pool.clone())
            .with_table("idem_records")
            .unwrap();
        store.migrate().await.unwrap();
        // The baseline's table: the same shape, made by the same migration.
        let shape = SqliteStore::new(pool.clone())
            .with_table("baseline_records")
            .unwrap();
        shape.migrate().await.unwrap();
        let sql = Arc::new(SqliteSql::new("baseline_records"));
        let base = |variant| BaseSqlite {
            pool: pool.clone(),
            sql: sql.clone(),
            variant,
        };
        (
            IdemSqlite(store),
            base(Variant::Minimal),
            [
                ("read_first_1conn", base(Variant::ReadFirstOneConn), WRITES),
                ("insert_first", base(Variant::InsertFirst), REPLAYS),
                ("store_read", base(Variant::StoreRead), REPLAYS),
            ],
        )
    });
    bench_backend(c, "sqlite", &rt, &idem, &baseline, &variants);
    rt.block_on(baseline.pool.close());
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

fn bench_postgres(c: &mut Criterion) {
    let rt = runtime();
    let url = url("IDEM_TEST_POSTGRES_URL", POSTGRES_URL);
    let pool = match rt.block_on(
        PgPoolOptions::new()
            .max_connections(POOL)
            .test_before_acquire(false)
            .connect(&url),
    ) {
        Ok(pool) => pool,
        Err(e) => return skipped("PostgreSQL", &url, e),
    };
    let table = unique("idem_bench");
    let base_table = format!("{table}_base");
    let (idem, baseline, variants) = rt.block_on(async {
        let store = PgStore::new(pool.clone()).with_table(&table).unwrap();
        store.migrate().await.unwrap();
        let shape = PgStore::new(pool.clone()).with_table(&base_table).unwrap();
        shape.migrate().await.unwrap();
        let sql = Arc::new(PgSql::new(&base_table));
        let base = |variant| BasePg {
            pool: pool.clone(),
            sql: sql.clone(),
            variant,
        };
        (
            IdemPg(store),
            base(Variant::Minimal),
            [
                ("claim_cte", base(Variant::ClaimCte), ALL),
                ("read_first_1conn", base(Variant::ReadFirstOneConn), WRITES),
                ("insert_first", base(Variant::InsertFirst), REPLAYS),
            ],
        )
    });
    bench_backend(c, "postgres", &rt, &idem, &baseline, &variants);
    rt.block_on(async {
        for t in [&table, &base_table] {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    });
}

fn bench_mysql(c: &mut Criterion) {
    let rt = runtime();
    let url = url("IDEM_TEST_MYSQL_URL", MYSQL_URL);
    let pool = match rt.block_on(
        MySqlPoolOptions::new()
            .max_connections(POOL)
            .test_before_acquire(false)
            .connect(&url),
    ) {
        Ok(pool) => pool,
        Err(e) => return skipped("MySQL/MariaDB", &url, e),
    };
    let table = unique("idem_bench");
    let base_table = format!("{table}_base");
    let (idem, baseline, variants) = rt.block_on(async {
        let store = MySqlStore::new(pool.clone()).with_table(&table).unwrap();
        store.migrate().await.unwrap();
        let shape = MySqlStore::new(pool.clone())
            .with_table(&base_table)
            .unwrap();
        shape.migrate().await.unwrap();
        let sql = Arc::new(MySqlSql::new(&base_table));
        let base = |variant| BaseMySql {
            pool: pool.clone(),
            sql: sql.clone(),
            variant,
        };
        (
            IdemMySql(store),
            base(Variant::Minimal),
            [
                ("read_first_1conn", base(Variant::ReadFirstOneConn), WRITES),
                ("insert_first", base(Variant::InsertFirst), REPLAYS),
                ("store_read", base(Variant::StoreRead), REPLAYS),
            ],
        )
    });
    bench_backend(c, "mysql", &rt, &idem, &baseline, &variants);
    rt.block_on(async {
        for t in [&table, &base_table] {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .nresamples(20_000)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_sqlite, bench_postgres, bench_mysql
}
criterion_main!(benches);
