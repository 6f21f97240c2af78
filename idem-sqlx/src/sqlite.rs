//! SQLite: [`SqliteStore`], and what its dialect does its own way.

use idem_core::store::Claim;
use idem_core::{Error, StoreError};
use sqlx::sqlite::{SqliteConnection, SqliteQueryResult, SqliteRow};
use sqlx::{Row, SqlStr, Transaction};
use std::time::Duration;

use crate::batch::{self, BatchRow, Completion};
use crate::claim::{CLAIM_ATTEMPTS, NewClaim, kept_changing};
use crate::dialect::{Dialect, Placeholders, Templates};
use crate::duration::micros;
use crate::error::backend;
use crate::found::{self, Found};
use crate::store::{Common, SqlStore};
use crate::table::{Quoting, Table};

/// The database's clock as integer milliseconds since the Unix epoch. `julianday('now')`
/// works on every SQLite version (unlike `unixepoch('subsec')`, 3.42+), is millisecond
/// precise, and is the same value everywhere in one statement.
const NOW: &str = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

/// Idempotency records in SQLite: exactly-once across every task and process sharing the
/// database file.
///
/// Built from your pool; create the table with [`migrate`](SqlStore::migrate). A claim
/// is two statements on one connection: a read of the key (`SELECT` by primary key) and one
/// `INSERT … ON CONFLICT DO UPDATE … WHERE expired` that inserts the record or takes over
/// an expired one, and leaves a live one alone — SQLite runs writers one at a time, so
/// exactly one concurrent claimer wins. Which goes first follows the store's recent
/// claims. While they mostly find records (retries, redeliveries; and when the store is
/// new), the read: a replay is that one read and writes nothing, a fresh call costs the
/// read, the insert and one fenced `UPDATE`. While they are mostly first calls, the
/// insert: a fresh call costs the insert and the `UPDATE`, and a replay the insert (which
/// changes nothing and commits no page, but takes SQLite's one write lock like any writer,
/// so it queues behind a long transaction or a purge for up to the `busy_timeout`) and the
/// read. [`with_claim_order`](SqlStore::with_claim_order) fixes the order instead, e.g.
/// [`ClaimOrder::ReadFirst`](crate::ClaimOrder::ReadFirst) where replays must never wait for writers.
///
/// SQLite has no timestamp type: deadlines are INTEGER milliseconds since the Unix epoch,
/// always computed by SQLite's own clock (`julianday('now')`), never the application's.
/// Needs SQLite 3.24 or later (upsert); sqlx's bundled SQLite is far newer.
///
/// For concurrent use, open the database in WAL mode with a busy timeout, so that readers
/// never wait for the writer and writers queue for the write lock instead of failing with
/// `SQLITE_BUSY`:
///
/// ```no_run
/// # async fn open() -> Result<(), Box<dyn std::error::Error>> {
/// use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
/// use std::time::Duration;
///
/// let options = SqliteConnectOptions::new()
///     .filename("idem.db")
///     .create_if_missing(true)
///     .journal_mode(SqliteJournalMode::Wal)
///     .synchronous(SqliteSynchronous::Normal)
///     .busy_timeout(Duration::from_secs(5));
/// let pool = SqlitePoolOptions::new().connect_with(options).await?;
/// let store = idem_sqlx::SqliteStore::new(pool);
/// store.migrate().await?;
/// # Ok(()) }
/// ```
///
/// # Transactional mode
///
/// `SqliteStore` is a [`TxStore`](idem_core::TxStore) for `Transaction<'_, Sqlite>` (`tx = ...`, or
/// [`run_in_tx`](idem_core::run_in_tx)): the claim, the body's writes and the record commit
/// together or not at all. SQLite runs one writer at a time, so **begin the transaction
/// with `BEGIN IMMEDIATE`**:
///
/// ```ignore
/// let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
/// let receipt = bank.transfer(&mut tx, cmd).await?;
/// tx.commit().await?;
/// ```
///
/// It takes the write lock at `BEGIN`, before the claim reads the key. The claim then
/// reads and inserts as in plain mode, and nothing can change in between. A concurrent
/// duplicate waits at its own `BEGIN IMMEDIATE` until the first transaction ends. After a
/// commit it replays the recorded result; after a rollback or a crash it finds nothing and
/// runs. So in transactional mode a duplicate waits for the pool's **busy timeout**
/// ([`busy_timeout`](sqlx::sqlite::SqliteConnectOptions::busy_timeout)), not for
/// `wait_timeout`. When the busy timeout runs out, `BEGIN IMMEDIATE` itself fails with
/// `SQLITE_BUSY`, in your code and before any claim. An open `BEGIN IMMEDIATE`
/// transaction blocks every other writer of the database file (plain-mode claims too)
/// until it ends, so keep it short.
///
/// In a transaction the claim writes first (the insert, then the read if the key was
/// there), so that a deferred transaction (`pool.begin()`) whose first statement is the
/// claim becomes a writer at the claim, waiting for the lock for the busy timeout as
/// `BEGIN IMMEDIATE` would (and [`Error::WaitTimeout`] when that runs out). A deferred
/// transaction that read before its claim cannot become a writer while another connection
/// holds the lock or has committed since its first read: SQLite refuses at once
/// (`SQLITE_BUSY`, no wait), and the claim returns an [`Error::Store`] whose message says
/// to begin with `BEGIN IMMEDIATE`. Both come before the body runs; roll back.
///
/// # Limits
///
/// Outputs up to [`MAX_ENCODED_LEN`](idem_core::codec::MAX_ENCODED_LEN) (64 MiB, what a
/// codec may produce) are recorded; SQLite's own limit (`SQLITE_MAX_LENGTH`, 1,000,000,000
/// bytes by default and in sqlx's bundled SQLite) is far above it. A plain-mode claim that
/// is cancelled while a statement is in flight is released on the same connection once that
/// statement is done, so no orphan claim is left for the lease.
///
/// A process killed before its commit leaves neither a record nor an effect: the kernel
/// drops its locks, and the WAL frames it wrote have no commit frame, so no reader ever
/// sees them. The retry runs once. Do not let plain-mode calls and transactional calls
/// share keys (the same `name = ...`). A transaction that waits for a plain-mode call in
/// progress holds the write lock that call needs to finish.
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub type SqliteStore = SqlStore<SqliteDialect>;

/// The SQLite dialect of [`SqlStore`]: see [`SqliteStore`].
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct SqliteDialect;

/// What a claim reads of a record, for [`Dialect::found`]: expired (-1) by the same
/// `expires_at <= now` as the claim's upsert and the purge, whatever its type; else the
/// milliseconds left, which cannot overflow (a positive minus a positive), for an integer;
/// else NULL: SQLite stores what it is given, and text, a blob or a far REAL is a corrupt
/// record.
macro_rules! read_columns {
    () => {
        "state, fingerprint, outcome, output, \
         CASE WHEN expires_at <= {now} THEN -1 \
              WHEN typeof(expires_at) = 'integer' THEN expires_at - {now} \
         END AS remaining_ms"
    };
}

/// Its claim's write.
pub struct Statements {
    /// Inserts a fresh record, or takes over an expired one; a live one is left alone (0
    /// rows affected).
    claim: SqlStr,
}

impl Dialect for SqliteDialect {
    type Database = sqlx::Sqlite;
    // Whole milliseconds, as its deadlines are.
    type Duration = i64;
    type Statements = Statements;

    const QUOTING: Quoting = Quoting::Sqlite;
    const PLACEHOLDERS: Placeholders = Placeholders::Numbered;
    const TEMPLATES: Templates = Templates {
        read: concat!(
            "SELECT ",
            read_columns!(),
            " FROM {t} WHERE key_digest = ?1"
        ),
        renew: "UPDATE {t} SET lease_until = {now} + ?3, expires_at = {now} + ?3 \
                WHERE key_digest = ?1 AND token = ?2 AND state = 0",
        complete: "UPDATE {t} SET state = 1, outcome = ?3, output = ?4, lease_until = NULL, \
                     expires_at = {now} + ?5 \
                   WHERE key_digest = ?1 AND token = ?2 AND state = 0",
        completed: "SELECT 1 FROM {t} WHERE key_digest = ?1 AND token = ?2 AND state = 1",
        release: "DELETE FROM {t} WHERE key_digest = ?1 AND token = ?2 AND state = 0",
        purge: "DELETE FROM {t} WHERE rowid IN ( \
                  SELECT rowid FROM {t} WHERE expires_at <= {now} LIMIT ?1)",
        schema: &[
            "CREATE TABLE IF NOT EXISTS {t} ( \
               key_digest  BLOB PRIMARY KEY NOT NULL CHECK (length(key_digest) = 32), \
               namespace   TEXT NOT NULL, \
               key_preview TEXT NOT NULL, \
               fingerprint BLOB NOT NULL, \
               state       INTEGER NOT NULL, \
               token       INTEGER NOT NULL, \
               outcome     INTEGER, \
               output      BLOB, \
               lease_until INTEGER, \
               expires_at  INTEGER NOT NULL, \
               created_at  INTEGER NOT NULL)",
            "CREATE INDEX IF NOT EXISTS {i} ON {t} (expires_at)",
        ],
    };

    /// `{now}` is SQLite's clock, in milliseconds.
    fn sql(table: &Table, template: &str) -> SqlStr {
        table.sql(Self::QUOTING, &template.replace("{now}", NOW))
    }

    fn statements(table: &Table) -> Statements {
        Statements {
            claim: Self::sql(
                table,
                "INSERT INTO {t} (key_digest, namespace, key_preview, fingerprint, state, token, \
                                  outcome, output, lease_until, expires_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, NULL, NULL, {now} + ?6, {now} + ?6, {now}) \
                 ON CONFLICT (key_digest) DO UPDATE SET \
                   namespace = excluded.namespace, key_preview = excluded.key_preview, \
                   fingerprint = excluded.fingerprint, state = 0, token = excluded.token, \
                   outcome = NULL, output = NULL, lease_until = excluded.lease_until, \
                   expires_at = excluded.expires_at, created_at = excluded.created_at \
                 WHERE {t}.expires_at <= {now}",
            ),
        }
    }

    /// Whole milliseconds, rounded up (so a deadline never comes early) and at least 1.
    fn duration(d: Duration) -> i64 {
        millis(d)
    }

    fn found(row: &SqliteRow) -> Result<Found, StoreError> {
        let read = backend("claim");
        let remaining_ms: Option<i64> = row.try_get("remaining_ms").map_err(read)?;
        // Saturating: `i64::MAX` stays too far ahead (a corrupt record).
        let remaining_us = remaining_ms.map(|ms| ms.saturating_mul(1000));
        Ok(Found {
            state: row.try_get("state").map_err(read)?,
            fingerprint: row.try_get("fingerprint").map_err(read)?,
            outcome: row.try_get("outcome").map_err(read)?,
            output: row.try_get("output").map_err(read)?,
            remaining_us: found::remaining_us(
                remaining_us,
                "is neither past nor an integer (milliseconds since the Unix epoch)",
            )?,
        })
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    /// The claim on one connection: a pool's for plain mode, the transaction's in
    /// transactional mode (where the insert makes the transaction the writer, so nothing
    /// can change between it and the read).
    async fn claim(
        store: &SqliteStore,
        conn: &mut SqliteConnection,
        claim: NewClaim<'_>,
        read_first: bool,
    ) -> Result<Claim, StoreError> {
        let digest = claim.digest();
        let lease = millis(claim.lease);
        let mut read = read_first;
        for _ in 0..CLAIM_ATTEMPTS {
            if read
                && let Some(found) = Self::read(conn, &store.sql.read, digest).await?
                && found.live()
            {
                return found.into_claim();
            }
            read = true;
            // Absent or expired: insert it, or take the expired record over.
            let claimed = sqlx::query(store.sql.own.claim.clone())
                .bind(digest)
                .bind(claim.key.namespace())
                .bind(claim.key.preview())
                .bind(&claim.fingerprint.as_bytes()[..])
                .bind(claim.token)
                .bind(lease)
                .execute(&mut *conn)
                .await
                .map_err(backend("claim"))?;
            if claimed.rows_affected() == 1 {
                return Ok(claim.claimed());
            }
            // Live, or made live by a concurrent claim in between: read it.
        }
        Err(kept_changing())
    }

    async fn claim_in(
        store: &SqliteStore,
        tx: &mut Transaction<'_, sqlx::Sqlite>,
        claim: NewClaim<'_>,
        // Not settable per statement here: SQLite waits for the pool's busy timeout.
        _wait: Duration,
    ) -> Result<Claim, StoreError> {
        // In a `BEGIN IMMEDIATE` transaction the waiting already happened at `BEGIN` (for
        // the pool's busy timeout) and this never blocks. In a deferred one, writing first
        // makes the transaction a writer before it reads, if the claim is its first
        // statement (a read first would pin a snapshot that cannot be upgraded).
        let started = std::time::Instant::now();
        let claimed = Self::claim(store, tx, claim, false).await;
        match store.order.learn(claimed) {
            Err(e) if is_busy(&e) => {
                let waited = started.elapsed();
                // Only on this error path: the pool's busy timeout, from the connection.
                let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                    .fetch_one(&mut **tx)
                    .await
                    .unwrap_or(0);
                let busy_timeout = Duration::from_millis(busy_timeout.max(0) as u64);
                Err(busy(e, waited, busy_timeout))
            }
            claimed => claimed,
        }
    }

    /// One multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING key_digest` (its rows are
    /// the batch's, padded: `batch::rows_for`).
    async fn insert_batch(
        store: &SqliteStore,
        conn: &mut SqliteConnection,
        claims: &[NewClaim<'_>],
    ) -> Result<Option<Vec<Vec<u8>>>, sqlx::Error> {
        let rows = batch::repeat(
            "(?, ?, ?, ?, 0, ?, NULL, NULL, {now} + ?, {now} + ?, {now})",
            batch::rows_for(claims.len()),
            ", ",
        );
        let sql = Self::sql(
            &store.table,
            &format!(
                "INSERT INTO {{t}} (key_digest, namespace, key_preview, fingerprint, state, \
                   token, outcome, output, lease_until, expires_at, created_at) \
                 VALUES {rows} ON CONFLICT (key_digest) DO NOTHING RETURNING key_digest"
            ),
        );
        let mut query = sqlx::query_scalar(sql);
        for claim in batch::padded(claims) {
            let lease = millis(claim.lease);
            query = query
                .bind(claim.digest())
                .bind(claim.key.namespace())
                .bind(claim.key.preview())
                .bind(&claim.fingerprint.as_bytes()[..])
                .bind(claim.token)
                .bind(lease)
                .bind(lease);
        }
        query.fetch_all(conn).await.map(Some)
    }

    async fn read_batch(
        store: &SqliteStore,
        conn: &mut SqliteConnection,
        digests: &[&[u8]],
    ) -> Result<Vec<BatchRow>, sqlx::Error> {
        let columns = concat!("key_digest, token, ", read_columns!());
        Self::read_in(store, conn, columns, digests).await
    }

    /// One `UPDATE … FROM` the batch's rows (a `VALUES` list).
    async fn complete_batch(
        store: &SqliteStore,
        conn: &mut SqliteConnection,
        items: &[Completion<'_>],
    ) -> Result<u64, sqlx::Error> {
        let rows = batch::repeat("(?, ?, ?, ?, ?)", batch::rows_for(items.len()), ", ");
        let sql = Self::sql(
            &store.table,
            &format!(
                "WITH u(d, tk, o, b, ttl) AS (VALUES {rows}) \
                 UPDATE {{t}} SET state = 1, outcome = u.o, output = u.b, lease_until = NULL, \
                   expires_at = {{now}} + u.ttl \
                 FROM u WHERE {{t}}.key_digest = u.d AND {{t}}.token = u.tk AND {{t}}.state = 0"
            ),
        );
        let mut query = sqlx::query(sql);
        for item in batch::padded_completions(items) {
            query = query
                .bind(item.digest)
                .bind(item.token)
                .bind(item.outcome)
                .bind(item.bytes)
                .bind(millis(item.ttl));
        }
        Ok(query.execute(conn).await?.rows_affected())
    }

    async fn migrate(store: &SqliteStore) -> Result<(), Error> {
        let fail = |e| Error::Store(backend("migrate")(e));
        let mut tx = store
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(fail)?;
        Self::create_schema(store, &mut tx).await.map_err(fail)?;
        tx.commit().await.map_err(fail)
    }
}

/// A lease or TTL as whole milliseconds, rounded up (so a deadline never comes early) and
/// at least 1.
fn millis(d: Duration) -> i64 {
    // Whole microseconds (capped at about 100 years), plus one for a fraction of one.
    let micros = micros(d) + i64::from(!d.subsec_nanos().is_multiple_of(1000));
    (micros as u64).div_ceil(1000).max(1) as i64
}

/// Whether a claim failed for want of SQLite's write lock (`SQLITE_BUSY`, 5, or an extended
/// code of it such as `SQLITE_BUSY_SNAPSHOT`, 517).
fn is_busy(error: &StoreError) -> bool {
    if let StoreError::Backend { source, .. } = error
        && let Some(sqlx::Error::Database(db)) = source.downcast_ref::<sqlx::Error>()
    {
        return db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| code & 0xff == 5);
    }
    false
}

/// What a transactional claim that could not get the write lock returns: a timeout
/// (`Error::WaitTimeout`) if it waited the busy timeout out, as a deferred transaction whose
/// first statement is the claim does; else — SQLite refused at once, because the
/// transaction had read before its claim and cannot become a writer — an error that says
/// to begin with `BEGIN IMMEDIATE`.
fn busy(error: StoreError, waited: Duration, busy_timeout: Duration) -> StoreError {
    if !busy_timeout.is_zero() && waited >= busy_timeout {
        return StoreError::Timeout {
            op: "claim",
            after: waited,
        };
    }
    StoreError::backend(
        "claim",
        format!(
            "{error}: this transaction could not become a writer (it read before its claim, \
             and another connection holds SQLite's write lock or committed since); begin \
             transactions for `tx = ...` with `BEGIN IMMEDIATE` \
             (`pool.begin_with(\"BEGIN IMMEDIATE\")`), which waits for the lock at `BEGIN`"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::millis;
    use std::time::Duration;

    /// Not a check: what making a plain claim cancel-safe costs, on the cheapest claim there
    /// is (a replay on SQLite, one `SELECT`): the store's claim (its connection guarded by
    /// `cancel::ClaimConnection`), the same statements with no guard, and the same run on a
    /// task of its own (the other cancel-safe shape, spawn and join), interleaved in
    /// rounds. Run with `cargo test --release -p idem-sqlx --features sqlite --lib --
    /// --ignored --nocapture measure`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; prints timings"]
    async fn measure_cancel_safe_claim_cost() {
        use super::{SqliteDialect, SqliteStore};
        use crate::claim::NewClaim;
        use crate::dialect::Dialect;
        use crate::token;
        use idem_core::store::{Claim, Outcome, Output};
        use idem_core::{Fingerprint, Key, Store};
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
        use std::time::Instant;

        let path = std::env::temp_dir().join(format!("idem_measure_{}.db", std::process::id()));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .unwrap();
        let store = SqliteStore::new(pool.clone());
        store.migrate().await.unwrap();
        let (key, fp) = (
            Key::new("measure", "k").unwrap(),
            Fingerprint::from_bytes([1; 32]),
        );
        let long = Duration::from_secs(600);
        let Ok(Claim::Claimed(token)) = store.claim(&key, &fp, long).await else {
            panic!("fresh key")
        };
        let output = Output {
            outcome: Outcome::Ok,
            bytes: vec![1; 42].into(),
        };
        store.complete(&key, token, output, long).await.unwrap();
        async fn unguarded(store: &SqliteStore, key: &Key, fp: Fingerprint) {
            let mut conn = store.pool.acquire().await.unwrap();
            let lease = Duration::from_secs(600);
            let claim = NewClaim {
                key,
                fingerprint: &fp,
                lease,
                token: token::fresh(),
            };
            let claim = SqliteDialect::claim(store, &mut conn, claim, true).await;
            assert!(matches!(claim, Ok(Claim::Completed(_))));
        }
        const N: u32 = 2000;
        let mut times: [Vec<Duration>; 3] = Default::default();
        for _ in 0..15 {
            let started = Instant::now();
            for _ in 0..N {
                assert!(matches!(
                    store.claim(&key, &fp, long).await,
                    Ok(Claim::Completed(_))
                ));
            }
            times[0].push(started.elapsed() / N);
            let started = Instant::now();
            for _ in 0..N {
                unguarded(&store, &key, fp).await;
            }
            times[1].push(started.elapsed() / N);
            let started = Instant::now();
            for _ in 0..N {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move { unguarded(&store, &key, fp).await })
                    .await
                    .unwrap();
            }
            times[2].push(started.elapsed() / N);
        }
        let [guarded, plain, spawned] = times.map(|mut t| {
            t.sort();
            t[t.len() / 2]
        });
        let ratio = |a: Duration| a.as_secs_f64() / plain.as_secs_f64();
        println!(
            "SQLite replay claim, median of 15 rounds of {N}: unguarded {plain:?}; guarded \
             (the store's) {guarded:?} ({:.3}x); on a task of its own {spawned:?} ({:.3}x)",
            ratio(guarded),
            ratio(spawned)
        );
        pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[test]
    fn durations_round_up_to_whole_milliseconds() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(300)), 300);
        assert_eq!(millis(Duration::from_micros(300_001)), 301);
        assert_eq!(millis(Duration::from_nanos(300_000_001)), 301);
        assert_eq!(
            millis(Duration::from_secs(u64::MAX)),
            100 * 365 * 24 * 3_600_000
        );
    }
}
