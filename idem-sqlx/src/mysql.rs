//! `MySqlStore`: records in a MySQL or MariaDB table.

use async_trait::async_trait;
use idem_core::{Claim, Error, Fingerprint, Key, Output, Store, StoreError, Token};
use sqlx::mysql::{MySql, MySqlDatabaseError, MySqlPool};
use sqlx::pool::PoolConnection;
use sqlx::{Row, SqlStr};
use std::sync::Arc;
use std::time::Duration;

use crate::found::{self, CLAIM_ATTEMPTS, Found, PURGE_BATCH, backend, fenced};
use crate::table::Table;
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
/// A claim reads first: one `SELECT` by primary key. A replay of a completed key is that one
/// round trip and writes nothing (no lock, no commit, no fsync). A fresh key costs the read
/// plus an `INSERT IGNORE` — two round trips and one commit — and then one fenced `UPDATE`
/// to complete it; taking over an expired record is the read plus one `UPDATE … WHERE
/// expires_at <= UTC_TIMESTAMP(6)`. That is one round trip more than `PgStore`'s
/// single-statement claim on PostgreSQL, because MySQL has no statement that inserts *or*
/// returns the existing row without writing it: `INSERT … ON DUPLICATE KEY UPDATE` locks and
/// writes the existing row on every replay (and, since sqlx sets `CLIENT_FOUND_ROWS`, reports
/// one row for a new key and for a duplicate alike, so it cannot tell a claim from a replay).
/// Inserting first and reading only on a duplicate would make the fresh call one round trip
/// but every replay two (an `INSERT IGNORE` of an existing key commits nothing, yet costs
/// about what the read does); replays are the common case, so the read comes first.
///
/// `complete`, `renew` and `release` are one fenced statement each (`WHERE key_digest = ?
/// AND token = ? AND state = 0`); they count the rows the `WHERE` matched
/// (`CLIENT_FOUND_ROWS`), so a renewal that happens to write the same deadline still counts.
#[derive(Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    table: Table,
    sql: Arc<Statements>,
}

struct Statements {
    read: SqlStr,
    insert: SqlStr,
    take_over: SqlStr,
    renew: SqlStr,
    complete: SqlStr,
    release: SqlStr,
    purge: SqlStr,
    create_table: SqlStr,
}

impl Statements {
    fn new(t: &Table) -> Self {
        Statements {
            read: t.sql(
                "SELECT state, fingerprint, outcome, output, \
                   expires_at > UTC_TIMESTAMP(6) AS live, \
                   TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) DIV 1000 AS remaining_ms \
                 FROM {t} WHERE key_digest = ?",
            ),
            insert: t.sql(
                "INSERT IGNORE INTO {t} (key_digest, namespace, key_preview, fingerprint, state, \
                   token, lease_until, expires_at, created_at) \
                 VALUES (?, ?, ?, ?, 0, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                   UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, UTC_TIMESTAMP(6))",
            ),
            take_over: t.sql(
                "UPDATE {t} SET namespace = ?, key_preview = ?, fingerprint = ?, state = 0, \
                   token = ?, outcome = NULL, output = NULL, \
                   lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                   expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                   created_at = UTC_TIMESTAMP(6) \
                 WHERE key_digest = ? AND expires_at <= UTC_TIMESTAMP(6)",
            ),
            renew: t.sql(
                "UPDATE {t} SET lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                   expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE key_digest = ? AND token = ? AND state = 0",
            ),
            complete: t.sql(
                "UPDATE {t} SET state = 1, outcome = ?, output = ?, lease_until = NULL, \
                   expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE key_digest = ? AND token = ? AND state = 0",
            ),
            release: t.sql("DELETE FROM {t} WHERE key_digest = ? AND token = ? AND state = 0"),
            purge: t.sql(
                "DELETE FROM {t} WHERE expires_at <= UTC_TIMESTAMP(6) \
                 ORDER BY expires_at, key_digest LIMIT ?",
            ),
            create_table: t.sql(
                "CREATE TABLE IF NOT EXISTS {t} ( \
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
                   INDEX {t}_expires_at (expires_at) \
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            ),
        }
    }
}

/// How long `migrate` waits for another process's migration of the same table.
const MIGRATE_LOCK_WAIT_SECS: i64 = 60;

/// The `namespace` column holds this many characters; longer namespaces are cut (the key
/// digest, not this column, identifies a record).
const NAMESPACE_CHARS: usize = 255;

impl MySqlStore {
    /// A store on `pool`, in the table `idem_records`.
    pub fn new(pool: MySqlPool) -> Self {
        let table = Table::default();
        MySqlStore {
            sql: Arc::new(Statements::new(&table)),
            pool,
            table,
        }
    }

    /// The same store in table `name` (an ASCII identifier; anything else is an error).
    pub fn with_table(self, name: &str) -> Result<Self, Error> {
        let table = Table::new(name)?;
        Ok(MySqlStore {
            sql: Arc::new(Statements::new(&table)),
            pool: self.pool,
            table,
        })
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

/// InnoDB chose this statement as a deadlock victim (error 1213): safe to run it again.
fn is_deadlock(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|e| e.number() == 1213),
        _ => false,
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
        let token = token::fresh();
        let digest = &key.digest().as_bytes()[..];
        let namespace = truncate_chars(key.namespace(), NAMESPACE_CHARS);
        let lease = found::micros(lease);
        for _ in 0..CLAIM_ATTEMPTS {
            // Read first, so that a replay (the common case) writes nothing.
            let row = sqlx::query(self.sql.read.clone())
                .bind(digest)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend("claim"))?;
            let written = match row {
                None => {
                    // Absent: insert it, unless a concurrent claimer just did (0 rows).
                    sqlx::query(self.sql.insert.clone())
                        .bind(digest)
                        .bind(namespace)
                        .bind(key.preview())
                        .bind(&fingerprint.as_bytes()[..])
                        .bind(token)
                        .bind(lease)
                        .bind(lease)
                        .execute(&self.pool)
                        .await
                }
                Some(row) => {
                    let read = |e| StoreError::backend("claim", e);
                    let found = Found {
                        state: row.try_get("state").map_err(read)?,
                        fingerprint: row.try_get("fingerprint").map_err(read)?,
                        outcome: row.try_get("outcome").map_err(read)?,
                        output: row.try_get("output").map_err(read)?,
                        live: row.try_get::<i64, _>("live").map_err(read)? != 0,
                        remaining_ms: row.try_get("remaining_ms").map_err(read)?,
                    };
                    if found.live {
                        return found.into_claim();
                    }
                    // Expired: take it over, unless another claimer just did (0 rows).
                    sqlx::query(self.sql.take_over.clone())
                        .bind(namespace)
                        .bind(key.preview())
                        .bind(&fingerprint.as_bytes()[..])
                        .bind(token)
                        .bind(lease)
                        .bind(lease)
                        .bind(digest)
                        .execute(&self.pool)
                        .await
                }
            };
            match written {
                Ok(done) if done.rows_affected() == 1 => {
                    return Ok(Claim::Claimed(Token::new(token as u64)));
                }
                // Lost a race (or a deadlock with a concurrent purge): read again.
                Ok(_) => continue,
                Err(e) if is_deadlock(&e) => continue,
                Err(e) => return Err(backend("claim")(e)),
            }
        }
        Err(StoreError::backend(
            "claim",
            "the record kept changing under concurrent claims",
        ))
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        let lease = found::micros(lease);
        let done = sqlx::query(self.sql.renew.clone())
            .bind(lease)
            .bind(lease)
            .bind(&key.digest().as_bytes()[..])
            .bind(token_value(token))
            .execute(&self.pool)
            .await
            .map_err(backend("renew"))?;
        fenced(done.rows_affected())
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(self.sql.complete.clone())
            .bind(found::outcome_code(output.outcome))
            .bind(&output.bytes[..])
            .bind(found::micros(ttl))
            .bind(&key.digest().as_bytes()[..])
            .bind(token_value(token))
            .execute(&self.pool)
            .await
            .map_err(backend("complete"))?;
        fenced(done.rows_affected())
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let done = sqlx::query(self.sql.release.clone())
            .bind(&key.digest().as_bytes()[..])
            .bind(token_value(token))
            .execute(&self.pool)
            .await
            .map_err(backend("release"))?;
        fenced(done.rows_affected())
    }

    fn release_on_drop(&self, key: &Key, token: Token) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.clone();
            let key = key.clone();
            runtime.spawn(async move {
                if let Err(e) = store.release(&key, token).await {
                    tracing::debug!(%e, "release after cancellation failed; the lease will expire");
                }
            });
        }
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let mut purged = 0;
        let mut deadlocks = 0;
        loop {
            let done = match sqlx::query(self.sql.purge.clone())
                .bind(PURGE_BATCH)
                .execute(&self.pool)
                .await
            {
                Ok(done) => done,
                // A claim taking over an expired row can deadlock with the range delete;
                // the batch is rolled back whole, so running it again is safe.
                Err(e) if is_deadlock(&e) && deadlocks < CLAIM_ATTEMPTS => {
                    deadlocks += 1;
                    continue;
                }
                Err(e) => return Err(backend("purge")(e)),
            };
            purged += done.rows_affected();
            if done.rows_affected() < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
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
