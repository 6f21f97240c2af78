//! MySQL and MariaDB: [`MySqlStore`], and what its dialect does its own way.

use idem_core::store::Claim;
use idem_core::{Error, StoreError};
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError, MySqlQueryResult, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{Row, SqlStr, Transaction};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::batch::{self, BatchRow, Completion};
use crate::claim::{CLAIM_ATTEMPTS, NewClaim, kept_changing};
use crate::dialect::{Dialect, Placeholders, Templates};
use crate::duration::micros;
use crate::error::{backend, corrupt};
use crate::found::{self, Found};
use crate::store::{Common, SqlStore};
use crate::table::{Quoting, Table};

/// Idempotency records in MySQL or MariaDB (InnoDB): exactly-once across every process
/// sharing the database.
///
/// Built from your pool; create the table with [`migrate`](SqlStore::migrate). All times
/// come from the database's `UTC_TIMESTAMP(6)` (never `NOW()`, which follows the session's
/// time zone), so app nodes with skewed clocks or other time zones agree.
///
/// # What a call costs
///
/// A claim (outside a transaction; see below for inside one) is two statements: one
/// `SELECT` by primary key and one `INSERT IGNORE`, because MySQL has no statement that
/// inserts *or* returns the existing row without writing it: `INSERT … ON DUPLICATE KEY
/// UPDATE` locks and writes the existing row on every replay (and, since sqlx sets
/// `CLIENT_FOUND_ROWS`, reports one row for a new key and for a duplicate alike, so it
/// cannot tell a claim from a replay). Which goes first follows what the store's recent
/// claims found. While they mostly find records (retries, redeliveries), the read goes
/// first: a replay is that one round trip and writes nothing (no lock, no commit, no
/// fsync), and a fresh key costs the read plus the insert. While they are mostly first
/// calls, the insert goes first: a fresh key is that one round trip and one commit, and a
/// replay costs the insert (which finds the key and commits nothing) plus the read.
/// [`with_claim_order`](SqlStore::with_claim_order) fixes the order instead (a
/// transactional claim always inserts first, see below). A fresh key is then completed by
/// one fenced `UPDATE`; taking over an expired record costs one `UPDATE … WHERE expires_at
/// <= UTC_TIMESTAMP(6)` more.
///
/// `complete`, `renew` and `release` are one fenced statement each (`WHERE key_digest = ?
/// AND token = ? AND state = 0`); they count the rows the `WHERE` matched
/// (`CLIENT_FOUND_ROWS`), so a renewal that happens to write the same deadline still counts.
/// A `complete` whose `UPDATE` matches nothing reads once more, to tell a retry of its own
/// completion (`Ok`) from a lost lease.
///
/// # Limits
///
/// A statement, with its parameters, and a result row must fit in the server's
/// `max_allowed_packet` (16 MiB on MariaDB by default, 64 MiB on MySQL 8). The store reads it
/// once, on its first claim or [`migrate`](SqlStore::migrate), and
/// [`max_output_len`](idem_core::Store::max_output_len) is that minus 1 KiB for the statement and the
/// other columns (at most 64 MiB, the codec's limit); until it has been read, 1 MiB. Raise
/// `max_allowed_packet` for larger outputs, and restart the application.
///
/// A claim that is cancelled while a statement is in flight (an `INSERT` blocked behind
/// another transaction's lock on the key, which the server still runs when that lock goes)
/// is released on the same connection once that statement is done, so no orphan claim is
/// left for the lease.
///
/// # Transactional mode
///
/// With `#[idempotent(tx = tx)]` (or [`run_in_tx`](idem_core::run_in_tx)) on a
/// `Transaction<'_, MySql>`, the claim, the body's writes and the record commit together in
/// the caller's transaction; a rollback, or a client that dies before its commit (the server
/// rolls its transaction back when the connection drops), leaves no record and no effect.
/// The same statements run, in another order, because InnoDB's default isolation is
/// `REPEATABLE READ`: a plain `SELECT` inside the transaction reads the transaction's
/// snapshot and would not see a record another transaction committed while this one
/// waited. So the claim inserts first: `INSERT IGNORE` waits for a concurrent, not yet
/// committed insert of the same key until that transaction ends, and then inserts (one row:
/// claimed, after a rollback) or finds the duplicate (zero rows, after a commit). Only then
/// does it read, with a locking read (`SELECT … LOCK IN SHARE MODE`), which sees the latest
/// committed row and keeps it from changing until the caller's transaction ends; an expired
/// record is taken over with the same `UPDATE … WHERE expires_at <= UTC_TIMESTAMP(6)`. (A
/// locking read *before* the insert would be wrong too: on an absent key it takes a gap
/// lock, and two transactions holding it both block each other's insert — a deadlock.) So
/// in a transaction a fresh key costs the `INSERT IGNORE`, and a replay that plus the read
/// (with a shared row lock, which concurrent replays share), each plus the two `SET`s of
/// the lock wait timeout below.
///
/// The call's `wait_timeout` becomes InnoDB's `innodb_lock_wait_timeout` for the claim's
/// statements only: whole seconds, rounded up, at least 1. The claim saves the session's
/// value in the user variable `@idem_lock_wait_timeout`, sets its own and puts the saved
/// one back afterwards (a session variable outlives the transaction, and the connection
/// goes back to the pool); if the claim is cancelled in between, the connection keeps the
/// claim's timeout until its next transactional claim restores the saved value. Running out
/// of it (error 1205, which by default rolls back only the statement) is
/// [`StoreError::Timeout`] (`Error::WaitTimeout` from the macro). InnoDB resolves a
/// deadlock (error 1213) by rolling back the *whole* transaction, so the claim does not
/// retry it there as plain mode does: it is a [`StoreError::Backend`] returned before the
/// body runs, and the caller must roll back and run the transaction again. The known way
/// to get one: the owner of a key rolls back while two or more others wait to insert it —
/// each of them holds a shared lock on the key after the rollback and needs an exclusive
/// one to insert, so InnoDB picks all but one as victims (the same happens when two
/// transactions take over the same expired record at once).
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub type MySqlStore = SqlStore<MySqlDialect>;

/// The MySQL/MariaDB dialect of [`SqlStore`]: see [`MySqlStore`]. It keeps the server's
/// `max_allowed_packet` once read, shared by the store's clones.
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
#[derive(Clone, Debug, Default)]
pub struct MySqlDialect {
    /// The server's `max_allowed_packet`, once read (0 until then).
    max_packet: Arc<AtomicUsize>,
}

/// Its claim's statements.
pub struct Statements {
    /// The read with a shared lock, for a claim in a transaction.
    read_locked: SqlStr,
    insert: SqlStr,
    take_over: SqlStr,
}

/// The columns of [`READ`], for [`Dialect::found`].
macro_rules! read_columns {
    () => {
        "state, fingerprint, outcome, output, \
         CASE WHEN expires_at <= UTC_TIMESTAMP(6) THEN -1 \
              ELSE TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) END AS remaining_us"
    };
}

/// A claim's read of the key's row. An `expires_at` the takeover and the purge treat as
/// past (`<= UTC_TIMESTAMP(6)`) is -1 — a zero date `0000-00-00` included, for which
/// `TIMESTAMPDIFF` is NULL — so such a row counts as expired; NULL is left for dates that
/// are neither (a corrupt record).
const READ: &str = concat!("SELECT ", read_columns!(), " FROM {t} WHERE key_digest = ?");

impl Dialect for MySqlDialect {
    type Database = sqlx::MySql;
    // Whole microseconds, for `INTERVAL ? MICROSECOND`.
    type Duration = i64;
    type Statements = Statements;

    const QUOTING: Quoting = Quoting::MySql;
    const PLACEHOLDERS: Placeholders = Placeholders::Positional;
    const TEMPLATES: Templates = Templates {
        read: READ,
        renew: "UPDATE {t} SET lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                  expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                WHERE key_digest = ? AND token = ? AND state = 0",
        complete: "UPDATE {t} SET state = 1, outcome = ?, output = ?, lease_until = NULL, \
                     expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                   WHERE key_digest = ? AND token = ? AND state = 0",
        completed: "SELECT 1 FROM {t} WHERE key_digest = ? AND token = ? AND state = 1",
        release: "DELETE FROM {t} WHERE key_digest = ? AND token = ? AND state = 0",
        purge: "DELETE FROM {t} WHERE expires_at <= UTC_TIMESTAMP(6) \
                ORDER BY expires_at, key_digest LIMIT ?",
        schema: &["CREATE TABLE IF NOT EXISTS {t} ( \
               key_digest  BINARY(32) NOT NULL PRIMARY KEY, \
               namespace   VARCHAR(255) NOT NULL, \
               key_preview VARCHAR(100) NOT NULL, \
               fingerprint BINARY(32) NOT NULL, \
               state       TINYINT NOT NULL, \
               token       BIGINT NOT NULL, \
               outcome     TINYINT NULL, \
               output      LONGBLOB NULL, \
               lease_until DATETIME(6) NULL, \
               expires_at  DATETIME(6) NOT NULL, \
               created_at  DATETIME(6) NOT NULL, \
               INDEX {i} (expires_at) \
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"],
    };

    fn statements(table: &Table) -> Statements {
        let sql = |template: &str| Self::sql(table, template);
        Statements {
            read_locked: sql(&format!("{READ} LOCK IN SHARE MODE")),
            insert: sql(
                "INSERT IGNORE INTO {t} (key_digest, namespace, key_preview, fingerprint, state, \
                   token, lease_until, expires_at, created_at) \
                 VALUES (?, ?, ?, ?, 0, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                   UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, UTC_TIMESTAMP(6))",
            ),
            take_over: sql(
                "UPDATE {t} SET namespace = ?, key_preview = ?, fingerprint = ?, state = 0, \
                   token = ?, outcome = NULL, output = NULL, \
                   lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                   expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                   created_at = UTC_TIMESTAMP(6) \
                 WHERE key_digest = ? AND expires_at <= UTC_TIMESTAMP(6)",
            ),
        }
    }

    fn duration(d: Duration) -> i64 {
        micros(d)
    }

    fn found(row: &MySqlRow) -> Result<Found, StoreError> {
        let column = backend("claim");
        Ok(Found {
            state: row.try_get("state").map_err(column)?,
            fingerprint: row.try_get("fingerprint").map_err(column)?,
            outcome: row.try_get("outcome").map_err(column)?,
            output: row.try_get("output").map_err(column)?,
            remaining_us: found::remaining_us(
                row.try_get("remaining_us").map_err(column)?,
                "is not a valid date",
            )?,
        })
    }

    fn rows_affected(done: &MySqlQueryResult) -> u64 {
        done.rows_affected()
    }

    fn live_claim(found: Found) -> Result<Claim, StoreError> {
        not_padded(&found.fingerprint)?;
        found.into_claim()
    }

    async fn claim(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        claim: NewClaim<'_>,
        read_first: bool,
    ) -> Result<Claim, StoreError> {
        store.dialect.learn_max_packet(conn).await;
        claim_on(store, conn, claim, Mode::Plain { read_first }).await
    }

    async fn claim_in(
        store: &MySqlStore,
        tx: &mut Transaction<'_, sqlx::MySql>,
        claim: NewClaim<'_>,
        wait: Duration,
    ) -> Result<Claim, StoreError> {
        // `wait` is the lock wait timeout of this claim only. The session's own value is
        // put back afterwards, also after a failed claim: unlike PostgreSQL's
        // `set_config(…, true)` a session variable outlives the transaction, and the
        // connection goes back to the pool.
        store.dialect.learn_max_packet(tx).await;
        sqlx::query(SET_LOCK_WAIT)
            .bind(lock_wait_secs(wait))
            .execute(&mut **tx)
            .await
            .map_err(backend("claim"))?;
        let claimed = claim_on(store, tx, claim, Mode::InTx)
            .await
            .map_err(|e| lock_timeout(e, wait));
        let restored = sqlx::query(RESTORE_LOCK_WAIT)
            .execute(&mut **tx)
            .await
            .map_err(backend("claim"));
        let claimed = claimed?;
        restored?;
        Ok(claimed)
    }

    /// One multi-row `INSERT IGNORE` (its rows are the batch's, padded:
    /// `batch::rows_for`); no `RETURNING` on MySQL, so the batch reads the rows back.
    async fn insert_batch(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        claims: &[NewClaim<'_>],
    ) -> Result<Option<Vec<Vec<u8>>>, sqlx::Error> {
        let rows = batch::repeat(
            "(?, ?, ?, ?, 0, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
              UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, UTC_TIMESTAMP(6))",
            batch::rows_for(claims.len()),
            ", ",
        );
        let sql = Self::sql(
            &store.table,
            &format!(
                "INSERT IGNORE INTO {{t}} (key_digest, namespace, key_preview, fingerprint, \
                   state, token, lease_until, expires_at, created_at) VALUES {rows}"
            ),
        );
        let mut query = sqlx::query(sql);
        for claim in batch::padded(claims) {
            let lease = micros(claim.lease);
            query = query
                .bind(claim.digest())
                .bind(truncate_chars(claim.key.namespace(), NAMESPACE_CHARS))
                .bind(claim.key.preview())
                .bind(&claim.fingerprint.as_bytes()[..])
                .bind(claim.token)
                .bind(lease)
                .bind(lease);
        }
        query.execute(conn).await.map(|_| None)
    }

    async fn read_batch(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        digests: &[&[u8]],
    ) -> Result<Vec<BatchRow>, sqlx::Error> {
        let columns = concat!("key_digest, token, ", read_columns!());
        Self::read_in(store, conn, columns, digests).await
    }

    /// One `UPDATE` joined with the batch's rows (MySQL has no `UPDATE … FROM` and no
    /// `VALUES` table before 8.0.19; a `UNION ALL` of bound rows works on both).
    /// `CLIENT_FOUND_ROWS`: the count is of rows matched.
    async fn complete_batch(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        items: &[Completion<'_>],
    ) -> Result<u64, sqlx::Error> {
        let rows = batch::rows_for(items.len());
        let rows = batch::repeat("SELECT ?, ?, ?, ?, ?", rows - 1, " UNION ALL ");
        let sql = Self::sql(
            &store.table,
            &format!(
                "UPDATE {{t}} AS r JOIN ( \
                   SELECT ? AS d, ? AS tk, ? AS o, ? AS b, ? AS ttl {union}{rows}) AS u \
                   ON r.key_digest = u.d AND r.token = u.tk \
                 SET r.state = 1, r.outcome = u.o, r.output = u.b, r.lease_until = NULL, \
                   r.expires_at = UTC_TIMESTAMP(6) + INTERVAL u.ttl MICROSECOND \
                 WHERE r.state = 0",
                union = if rows.is_empty() { "" } else { "UNION ALL " },
            ),
        );
        let mut query = sqlx::query(sql);
        for item in batch::padded_completions(items) {
            query = query
                .bind(item.digest)
                .bind(item.token)
                .bind(item.outcome)
                .bind(item.bytes)
                .bind(micros(item.ttl));
        }
        Ok(query.execute(conn).await?.rows_affected())
    }

    async fn migrate(store: &MySqlStore) -> Result<(), Error> {
        let fail = |e| Error::Store(backend("migrate")(e));
        let lock_name = format!("idem-migrate:{}", store.table.name());
        // Closes the connection, and with it the lock, if this future is dropped or a
        // statement fails while the lock may be held: a pooled connection must never keep it.
        let mut held = LockedConnection {
            conn: store.pool.acquire().await.map_err(fail)?,
            released: false,
        };
        let conn = &mut held.conn;
        store.dialect.learn_max_packet(conn).await;
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(&lock_name)
            .bind(MIGRATE_LOCK_WAIT_SECS)
            .fetch_one(&mut **conn)
            .await
            .map_err(fail)?;
        if got != Some(1) {
            return Err(Error::Store(StoreError::backend(
                "migrate",
                format!(
                    "another migration held the lock {lock_name:?} for more than \
                     {MIGRATE_LOCK_WAIT_SECS} s"
                ),
            )));
        }
        let created = Self::create_schema(store, conn).await;
        let released: Result<Option<i64>, _> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
            .bind(&lock_name)
            .fetch_one(&mut **conn)
            .await;
        created.map_err(fail)?;
        released.map_err(fail)?;
        held.released = true;
        Ok(())
    }

    /// The server's `max_allowed_packet` less 1 KiB, at most 64 MiB; 1 MiB until the first
    /// claim or `migrate` has read it (see [`MySqlStore`]).
    fn max_output_len(&self) -> usize {
        match self.max_packet.load(Ordering::Relaxed) {
            0 => UNKNOWN_PACKET_OUTPUT,
            packet => packet
                .saturating_sub(PACKET_MARGIN)
                .min(idem_core::codec::MAX_ENCODED_LEN),
        }
    }

    fn is_deadlock(error: &sqlx::Error) -> bool {
        is_deadlock(error)
    }
}

/// How long `migrate` waits for another process's migration of the same table.
const MIGRATE_LOCK_WAIT_SECS: i64 = 60;

/// The `namespace` column holds this many characters; longer namespaces are cut (the key
/// digest, not this column, identifies a record).
const NAMESPACE_CHARS: usize = 255;

/// What `max_output_len` says until the server told `max_allowed_packet`: 1 MiB, which
/// every supported server's default (MySQL 8: 64 MiB, MariaDB 10.5+: 16 MiB) is far above.
const UNKNOWN_PACKET_OUTPUT: usize = 1 << 20;
/// Room in a packet for the `complete` statement's other parameters and a replayed row's
/// other columns (each well under 100 bytes).
const PACKET_MARGIN: usize = 1024;

/// A pooled connection that may hold a named lock: closed instead of pooled when dropped,
/// unless `released` says the lock was released.
struct LockedConnection {
    conn: PoolConnection<sqlx::MySql>,
    released: bool,
}

impl Drop for LockedConnection {
    fn drop(&mut self) {
        if !self.released {
            self.conn.close_on_drop();
        }
    }
}

impl MySqlDialect {
    /// Reads `max_allowed_packet` from the server, once per store (and its clones).
    async fn learn_max_packet(&self, conn: &mut MySqlConnection) {
        if self.max_packet.load(Ordering::Relaxed) != 0 {
            return;
        }
        match sqlx::query_scalar::<_, i64>("SELECT CAST(@@max_allowed_packet AS SIGNED)")
            .fetch_one(conn)
            .await
        {
            Ok(bytes) => self
                .max_packet
                .store(usize::try_from(bytes).unwrap_or(0), Ordering::Relaxed),
            // Not worth failing a claim for: the limit stays at its safe lower bound.
            Err(e) => tracing::debug!(%e, "could not read max_allowed_packet"),
        }
    }
}

/// `s` cut to at most `max` characters, on a character boundary.
fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// InnoDB's "lock wait timeout exceeded" (it rolls back only the statement).
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// InnoDB's "deadlock found" (it rolls back the whole transaction).
const ER_LOCK_DEADLOCK: u16 = 1213;

/// The server's error number, for a database error.
fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// InnoDB chose this statement as a deadlock victim (error 1213). Outside a transaction
/// only the statement was rolled back, so it is safe to run it again.
fn is_deadlock(e: &sqlx::Error) -> bool {
    error_number(e) == Some(ER_LOCK_DEADLOCK)
}

/// Where a claim runs, which decides how it reads and what it may retry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Autocommit statements on a pooled connection: read first if `read_first` (as the
    /// store's `ClaimOrder` says), and run a statement InnoDB rolled back as a deadlock
    /// victim again.
    Plain { read_first: bool },
    /// In the caller's transaction: insert first, read with a shared lock, and never retry
    /// a deadlock (InnoDB rolled the whole transaction back).
    InTx,
}

/// The session variable a transactional claim keeps the caller's `innodb_lock_wait_timeout`
/// in while it runs with its own. `COALESCE`: a claim that was cancelled before it restored
/// the value left the caller's value there, and it stays the one to restore.
const SET_LOCK_WAIT: &str = "SET @idem_lock_wait_timeout = \
       COALESCE(@idem_lock_wait_timeout, @@SESSION.innodb_lock_wait_timeout), \
     SESSION innodb_lock_wait_timeout = ?";
const RESTORE_LOCK_WAIT: &str = "SET SESSION innodb_lock_wait_timeout = \
       COALESCE(CAST(@idem_lock_wait_timeout AS UNSIGNED), @@SESSION.innodb_lock_wait_timeout), \
     @idem_lock_wait_timeout = NULL";

/// `wait` as `innodb_lock_wait_timeout`: whole seconds, rounded up, at least 1 (0 would
/// not wait at all on MariaDB) and at most the server's maximum.
fn lock_wait_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.clamp(1, 1_073_741_824)
}

/// The claim on one connection: a pooled one in plain mode, the caller's transaction's
/// in transactional mode. See the type's docs for why the two order their statements
/// differently.
async fn claim_on(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    claim: NewClaim<'_>,
    mode: Mode,
) -> Result<Claim, StoreError> {
    let digest = claim.digest();
    let namespace = truncate_chars(claim.key.namespace(), NAMESPACE_CHARS);
    let (preview, fingerprint) = (claim.key.preview(), &claim.fingerprint.as_bytes()[..]);
    let lease = micros(claim.lease);
    let retry = |e: &sqlx::Error| mode != Mode::InTx && is_deadlock(e);
    // In a transaction always, else as the store's `ClaimOrder` says.
    let mut insert_first = match mode {
        Mode::Plain { read_first } => !read_first,
        Mode::InTx => true,
    };
    for _ in 0..CLAIM_ATTEMPTS {
        if insert_first {
            // Absent (or in a transaction, where an insert waits for a concurrent
            // uncommitted insert of the key): insert it, unless it exists (0 rows).
            let inserted = sqlx::query(store.sql.own.insert.clone())
                .bind(digest)
                .bind(namespace)
                .bind(preview)
                .bind(fingerprint)
                .bind(claim.token)
                .bind(lease)
                .bind(lease)
                .execute(&mut *conn)
                .await;
            match inserted {
                Ok(done) if done.rows_affected() == 1 => {
                    return Ok(claim.claimed());
                }
                Ok(_) => {}
                Err(e) if retry(&e) => {
                    insert_first = false;
                    continue;
                }
                Err(e) => return Err(backend("claim")(e)),
            }
        }
        let read = match mode {
            Mode::Plain { .. } => &store.sql.read,
            Mode::InTx => &store.sql.own.read_locked,
        };
        let Some(found) = MySqlDialect::read(conn, read, digest).await? else {
            insert_first = true;
            continue;
        };
        if found.live() {
            not_padded(&found.fingerprint)?;
            return found.into_claim();
        }
        // Expired: take it over, unless another claimer just did (0 rows).
        insert_first = mode == Mode::InTx;
        let taken = sqlx::query(store.sql.own.take_over.clone())
            .bind(namespace)
            .bind(preview)
            .bind(fingerprint)
            .bind(claim.token)
            .bind(lease)
            .bind(lease)
            .bind(digest)
            .execute(&mut *conn)
            .await;
        match taken {
            Ok(done) if done.rows_affected() == 1 => {
                return Ok(claim.claimed());
            }
            // Lost a race (or, in plain mode, a deadlock with a concurrent purge).
            Ok(_) => continue,
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(backend("claim")(e)),
        }
    }
    Err(kept_changing())
}

/// A 32-byte fingerprint that ends in 8 or more zero bytes is a shorter value that
/// `BINARY(32)` padded (a SHA-256 does that once in 2^64): a corrupt record, not another
/// request's fingerprint (which would read as a payload mismatch).
fn not_padded(fingerprint: &[u8]) -> Result<(), StoreError> {
    const PADDING: usize = 8;
    if fingerprint.len() == 32 && fingerprint[32 - PADDING..].iter().all(|b| *b == 0) {
        let zeros = fingerprint.iter().rev().take_while(|b| **b == 0).count();
        return Err(corrupt(
            "claim",
            format_args!(
                "fingerprint ends in {zeros} zero bytes: a shorter value padded by BINARY(32)"
            ),
        ));
    }
    Ok(())
}

/// A claim that gave up waiting for a concurrent transaction (InnoDB's lock wait timeout,
/// 1205) is a timeout; anything else, a deadlock (1213) included, stays as it is.
fn lock_timeout(error: StoreError, wait: Duration) -> StoreError {
    if let StoreError::Backend { source, .. } = &error
        && let Some(e) = source.downcast_ref::<sqlx::Error>()
        && error_number(e) == Some(ER_LOCK_WAIT_TIMEOUT)
    {
        return StoreError::Timeout {
            op: "claim",
            after: wait,
        };
    }
    error
}

#[cfg(test)]
mod tests {
    use super::truncate_chars;

    #[test]
    fn namespaces_are_cut_on_char_boundaries() {
        assert_eq!(truncate_chars("abc", 255), "abc");
        assert_eq!(truncate_chars("abc", 2), "ab");
        let long = "é".repeat(300);
        let cut = truncate_chars(&long, 255);
        assert_eq!(cut.chars().count(), 255);
        assert_eq!(cut.len(), 510);
        assert_eq!(truncate_chars("", 0), "");
    }
}
