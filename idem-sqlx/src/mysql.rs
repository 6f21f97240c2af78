//! `MySqlStore`: records in a MySQL or MariaDB table.

use async_trait::async_trait;
use idem_core::{Claim, Error, Fingerprint, Key, Output, Store, StoreError, Token, TxStore};
use sqlx::mysql::{MySql, MySqlConnection, MySqlDatabaseError, MySqlExecutor, MySqlPool};
use sqlx::pool::PoolConnection;
use sqlx::{Row, SqlStr, Transaction};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::cancel::{self, ClaimConnection};
use crate::found::{self, CLAIM_ATTEMPTS, Found, backend, fenced};
use crate::order::{ClaimOrder, Order};
use crate::purge::{self, PURGE_BATCH};
use crate::table::{Dialect, Table};
use crate::token;

/// Idempotency records in MySQL or MariaDB (InnoDB): exactly-once across every process
/// sharing the database.
///
/// Built from your pool; create the table with [`migrate`](MySqlStore::migrate). All times
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
/// [`with_claim_order`](MySqlStore::with_claim_order) fixes the order instead (a
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
/// once, on its first claim or [`migrate`](MySqlStore::migrate), and
/// [`max_output_len`](Store::max_output_len) is that minus 1 KiB for the statement and the
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
#[derive(Clone)]
pub struct MySqlStore {
    order: Arc<Order>,
    pool: MySqlPool,
    table: Table,
    sql: Arc<Statements>,
    /// The server's `max_allowed_packet`, once read (0 until then).
    max_packet: Arc<AtomicUsize>,
}

struct Statements {
    read: SqlStr,
    read_locked: SqlStr,
    insert: SqlStr,
    take_over: SqlStr,
    renew: SqlStr,
    complete: SqlStr,
    completed: SqlStr,
    release: SqlStr,
    purge: SqlStr,
    create_table: SqlStr,
}

/// A claim's read of the key's row. An `expires_at` the takeover and the purge treat as
/// past (`<= UTC_TIMESTAMP(6)`) is -1 — a zero date `0000-00-00` included, for which
/// `TIMESTAMPDIFF` is NULL — so such a row counts as expired; NULL is left for dates that
/// are neither (a corrupt record).
const READ: &str = "SELECT state, fingerprint, outcome, output, \
       CASE WHEN expires_at <= UTC_TIMESTAMP(6) THEN -1 \
            ELSE TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) END AS remaining_us \
     FROM {t} WHERE key_digest = ?";

impl Statements {
    fn new(t: &Table) -> Self {
        let sql = |template: &str| t.sql(Dialect::MySql, template);
        Statements {
            read: sql(READ),
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
            renew: sql(
                "UPDATE {t} SET lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                   expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE key_digest = ? AND token = ? AND state = 0",
            ),
            complete: sql(
                "UPDATE {t} SET state = 1, outcome = ?, output = ?, lease_until = NULL, \
                   expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE key_digest = ? AND token = ? AND state = 0",
            ),
            completed: sql("SELECT 1 FROM {t} WHERE key_digest = ? AND token = ? AND state = 1"),
            release: sql("DELETE FROM {t} WHERE key_digest = ? AND token = ? AND state = 0"),
            purge: sql("DELETE FROM {t} WHERE expires_at <= UTC_TIMESTAMP(6) \
                 ORDER BY expires_at, key_digest LIMIT ?"),
            create_table: sql("CREATE TABLE IF NOT EXISTS {t} ( \
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
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"),
        }
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

impl MySqlStore {
    /// A store on `pool`, in the table `idem_records`.
    pub fn new(pool: MySqlPool) -> Self {
        let table = Table::default();
        MySqlStore {
            order: Arc::default(),
            sql: Arc::new(Statements::new(&table)),
            pool,
            table,
            max_packet: Arc::default(),
        }
    }

    /// The same store in table `name` (an ASCII identifier; anything else is an error).
    pub fn with_table(self, name: &str) -> Result<Self, Error> {
        let table = Table::new(name)?;
        Ok(MySqlStore {
            order: Arc::new(Order::new(self.order.order())),
            sql: Arc::new(Statements::new(&table)),
            pool: self.pool,
            table,
            max_packet: self.max_packet,
        })
    }

    /// The same store with its claim's first statement fixed instead of learned from
    /// recent claims (see [`ClaimOrder`]).
    pub fn with_claim_order(self, order: ClaimOrder) -> Self {
        MySqlStore {
            order: Arc::new(Order::new(order)),
            ..self
        }
    }

    /// Creates the table and its expiry index if they are missing. Safe to call on every
    /// start and from several processes at once: serialized by a named lock
    /// (`GET_LOCK('idem-migrate:<table>')`) held on one connection around
    /// `CREATE TABLE IF NOT EXISTS`.
    pub async fn migrate(&self) -> Result<(), Error> {
        let fail = |e| Error::Store(backend("migrate")(e));
        let lock_name = format!("idem-migrate:{}", self.table.name());
        // Closes the connection, and with it the lock, if this future is dropped or a
        // statement fails while the lock may be held: a pooled connection must never keep it.
        let mut held = LockedConnection {
            conn: self.pool.acquire().await.map_err(fail)?,
            released: false,
        };
        let conn = &mut held.conn;
        self.learn_max_packet(conn).await;
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
        let created = sqlx::query(self.sql.create_table.clone())
            .execute(&mut **conn)
            .await;
        let released: Result<Option<i64>, _> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
            .bind(&lock_name)
            .fetch_one(&mut **conn)
            .await;
        created.map_err(fail)?;
        released.map_err(fail)?;
        held.released = true;
        Ok(())
    }

    /// The pool it runs on.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The table it uses.
    pub fn table(&self) -> &str {
        self.table.name()
    }
}

/// A pooled connection that may hold a named lock: closed instead of pooled when dropped,
/// unless `released` says the lock was released.
struct LockedConnection {
    conn: PoolConnection<MySql>,
    released: bool,
}

impl Drop for LockedConnection {
    fn drop(&mut self) {
        if !self.released {
            self.conn.close_on_drop();
        }
    }
}

impl MySqlStore {
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

fn token_value(token: Token) -> i64 {
    token.get() as i64
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
    /// Autocommit statements on a pooled connection: read or insert first as the store's
    /// `ClaimOrder` says, and run a statement InnoDB rolled back as a deadlock victim
    /// again.
    Plain,
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

impl MySqlStore {
    /// The claim on one connection: a pooled one in plain mode, the caller's transaction's
    /// in transactional mode. See the type's docs for why the two order their statements
    /// differently.
    async fn claim_on(
        &self,
        conn: &mut MySqlConnection,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
        token: i64,
        mode: Mode,
    ) -> Result<Claim, StoreError> {
        let digest = &key.digest().as_bytes()[..];
        let namespace = truncate_chars(key.namespace(), NAMESPACE_CHARS);
        let lease = found::micros(lease);
        let retry = |e: &sqlx::Error| mode == Mode::Plain && is_deadlock(e);
        // In a transaction always, else as the store's `ClaimOrder` says.
        let mut insert_first = mode == Mode::InTx || !self.order.read_first();
        for _ in 0..CLAIM_ATTEMPTS {
            if insert_first {
                // Absent (or in a transaction, where an insert waits for a concurrent
                // uncommitted insert of the key): insert it, unless it exists (0 rows).
                let inserted = sqlx::query(self.sql.insert.clone())
                    .bind(digest)
                    .bind(namespace)
                    .bind(key.preview())
                    .bind(&fingerprint.as_bytes()[..])
                    .bind(token)
                    .bind(lease)
                    .bind(lease)
                    .execute(&mut *conn)
                    .await;
                match inserted {
                    Ok(done) if done.rows_affected() == 1 => {
                        return Ok(Claim::Claimed(Token::new(token as u64)));
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
                Mode::Plain => self.sql.read.clone(),
                Mode::InTx => self.sql.read_locked.clone(),
            };
            let row = sqlx::query(read)
                .bind(digest)
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend("claim"))?;
            let Some(row) = row else {
                insert_first = true;
                continue;
            };
            let column = |e| StoreError::backend("claim", e);
            let found = Found {
                state: row.try_get("state").map_err(column)?,
                fingerprint: row.try_get("fingerprint").map_err(column)?,
                outcome: row.try_get("outcome").map_err(column)?,
                output: row.try_get("output").map_err(column)?,
                remaining_us: found::remaining_us(
                    row.try_get("remaining_us").map_err(column)?,
                    "is not a valid date",
                )?,
            };
            if found.live() {
                not_padded(&found.fingerprint)?;
                return found.into_claim();
            }
            // Expired: take it over, unless another claimer just did (0 rows).
            insert_first = mode == Mode::InTx;
            let taken = sqlx::query(self.sql.take_over.clone())
                .bind(namespace)
                .bind(key.preview())
                .bind(&fingerprint.as_bytes()[..])
                .bind(token)
                .bind(lease)
                .bind(lease)
                .bind(digest)
                .execute(&mut *conn)
                .await;
            match taken {
                Ok(done) if done.rows_affected() == 1 => {
                    return Ok(Claim::Claimed(Token::new(token as u64)));
                }
                // Lost a race (or, in plain mode, a deadlock with a concurrent purge).
                Ok(_) => continue,
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(backend("claim")(e)),
            }
        }
        Err(StoreError::backend(
            "claim",
            "the record kept changing under concurrent claims",
        ))
    }

    async fn renew_on<'e>(
        &self,
        conn: impl MySqlExecutor<'e>,
        key: &Key,
        token: Token,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let lease = found::micros(lease);
        let done = sqlx::query(self.sql.renew.clone())
            .bind(lease)
            .bind(lease)
            .bind(&key.digest().as_bytes()[..])
            .bind(token_value(token))
            .execute(conn)
            .await
            .map_err(backend("renew"))?;
        fenced(done.rows_affected())
    }

    /// The fenced `UPDATE`; when it matches no claim of `token`'s, whether `token` already
    /// completed the record (a retry after a lost reply: `Ok`, and the record stays as
    /// first written).
    async fn complete_on(
        &self,
        conn: &mut MySqlConnection,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let digest = &key.digest().as_bytes()[..];
        let done = sqlx::query(self.sql.complete.clone())
            .bind(found::outcome_code(output.outcome))
            .bind(&output.bytes[..])
            .bind(found::micros(ttl))
            .bind(digest)
            .bind(token_value(token))
            .execute(&mut *conn)
            .await
            .map_err(backend("complete"))?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        let completed = sqlx::query(self.sql.completed.clone())
            .bind(digest)
            .bind(token_value(token))
            .fetch_optional(conn)
            .await
            .map_err(backend("complete"))?;
        fenced(u64::from(completed.is_some()))
    }

    async fn release_on<'e>(
        &self,
        conn: impl MySqlExecutor<'e>,
        key: &Key,
        token: Token,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(self.sql.release.clone())
            .bind(&key.digest().as_bytes()[..])
            .bind(token_value(token))
            .execute(conn)
            .await
            .map_err(backend("release"))?;
        fenced(done.rows_affected())
    }
}

/// A 32-byte fingerprint that ends in 8 or more zero bytes is a shorter value that
/// `BINARY(32)` padded (a SHA-256 does that once in 2^64): a corrupt record, not another
/// request's fingerprint (which would read as a payload mismatch).
fn not_padded(fingerprint: &[u8]) -> Result<(), StoreError> {
    const PADDING: usize = 8;
    if fingerprint.len() == 32 && fingerprint[32 - PADDING..].iter().all(|b| *b == 0) {
        let zeros = fingerprint.iter().rev().take_while(|b| **b == 0).count();
        return Err(found::corrupt(
            "claim",
            format_args!(
                "fingerprint ends in {zeros} zero bytes: a shorter value padded by BINARY(32)"
            ),
        ));
    }
    Ok(())
}

impl cancel::ReleaseAfter for MySqlStore {
    type Conn = PoolConnection<MySql>;

    async fn release_after(self, mut conn: Self::Conn, key: Key, token: Token) {
        cancel::released(self.release_on(&mut *conn, &key, token).await)
    }
}

#[async_trait]
impl Store for MySqlStore {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let conn = self.pool.acquire().await.map_err(backend("claim"))?;
        let token = token::fresh();
        let mut guard = ClaimConnection::new(self, key, Token::new(token as u64), conn);
        let Some(conn) = guard.conn() else {
            return Err(StoreError::backend("claim", "no connection"));
        };
        self.learn_max_packet(conn).await;
        let claim = self
            .claim_on(conn, key, fingerprint, lease, token, Mode::Plain)
            .await;
        guard.disarm();
        self.order.learn(claim)
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        self.renew_on(&self.pool, key, token, lease).await
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend("complete"))?;
        self.complete_on(&mut conn, key, token, output, ttl).await
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        self.release_on(&self.pool, key, token).await
    }

    fn release_on_drop(&self, key: &Key, token: Token) {
        cancel::release_in_background(self, key, token);
    }

    /// The server's `max_allowed_packet` less 1 KiB, at most 64 MiB; 1 MiB until the first
    /// claim or `migrate` has read it (see the type's docs).
    fn max_output_len(&self) -> usize {
        match self.max_packet.load(Ordering::Relaxed) {
            0 => UNKNOWN_PACKET_OUTPUT,
            packet => packet
                .saturating_sub(PACKET_MARGIN)
                .min(idem_core::codec::MAX_ENCODED_LEN),
        }
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        purge::in_batches(|| async {
            let mut deadlocks = 0;
            loop {
                match sqlx::query(self.sql.purge.clone())
                    .bind(PURGE_BATCH)
                    .execute(&self.pool)
                    .await
                {
                    Ok(done) => return Ok(done.rows_affected()),
                    // A claim taking over an expired row can deadlock with the range
                    // delete; the batch is rolled back whole, so running it again is safe.
                    Err(e) if is_deadlock(&e) && deadlocks < CLAIM_ATTEMPTS => deadlocks += 1,
                    Err(e) => return Err(backend("purge")(e)),
                }
            }
        })
        .await
    }
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

#[async_trait]
impl<'c> TxStore<Transaction<'c, MySql>> for MySqlStore {
    async fn claim_in(
        &self,
        tx: &mut Transaction<'c, MySql>,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
        wait: Duration,
    ) -> Result<Claim, StoreError> {
        // `wait` is the lock wait timeout of this claim only. The session's own value is
        // put back afterwards, also after a failed claim: unlike PostgreSQL's
        // `set_config(…, true)` a session variable outlives the transaction, and the
        // connection goes back to the pool.
        self.learn_max_packet(tx).await;
        sqlx::query(SET_LOCK_WAIT)
            .bind(lock_wait_secs(wait))
            .execute(&mut **tx)
            .await
            .map_err(backend("claim"))?;
        let claim = self
            .claim_on(tx, key, fingerprint, lease, token::fresh(), Mode::InTx)
            .await
            .map_err(|e| lock_timeout(e, wait));
        let restored = sqlx::query(RESTORE_LOCK_WAIT)
            .execute(&mut **tx)
            .await
            .map_err(backend("claim"));
        let claim = claim?;
        restored?;
        Ok(claim)
    }

    async fn complete_in(
        &self,
        tx: &mut Transaction<'c, MySql>,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.complete_on(tx, key, token, output, ttl).await
    }

    async fn release_in(
        &self,
        tx: &mut Transaction<'c, MySql>,
        key: &Key,
        token: Token,
    ) -> Result<(), StoreError> {
        self.release_on(&mut **tx, key, token).await
    }
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
