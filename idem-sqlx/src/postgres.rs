//! `PgStore`: records in a PostgreSQL table.

use async_trait::async_trait;
use idem_core::{Claim, Error, Fingerprint, Key, Output, Store, StoreError, Token, TxStore};
use sqlx::Transaction;
use sqlx::pool::PoolConnection;
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::{PgConnection, PgExecutor, PgPool, PgRow, Postgres};
use sqlx::{Row, SqlStr};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::cancel::{self, ClaimConnection};
use crate::found::{self, CLAIM_ATTEMPTS, Found, backend, fenced};
use crate::order::{ClaimOrder, Order};
use crate::purge::{self, PURGE_BATCH};
use crate::table::{Dialect, Table};
use crate::token;

/// Idempotency records in PostgreSQL: exactly-once across every process sharing the
/// database.
///
/// Built from your pool; create the table with [`migrate`](PgStore::migrate). A claim is a
/// `SELECT` by primary key and an `INSERT … ON CONFLICT DO NOTHING`, in the order the
/// store's recent claims call for: the read first while they mostly find records (retries,
/// redeliveries — and when the store is new), so that a replay is that one read and writes
/// nothing; the insert first while they are mostly first calls, so that a fresh key is that
/// one insert (then one fenced `UPDATE` completes it). A wrong guess costs the other
/// statement; an insert that finds the key writes nothing. [`with_claim_order`] fixes the
/// order instead. Taking over an expired record costs the read and one `UPDATE … WHERE
/// expires_at <= now()` (after the insert, when inserting first). (One statement can do
/// both — an `INSERT`
/// and a read of the row in one CTE — but it costs the server 1.3–1.4× a `SELECT` on a
/// replay and 5–10% more than the plain insert on a fresh key under load; BENCHMARKS.md.)
/// All times come from the database's `now()`.
///
/// A claim that is cancelled (its future dropped) while a statement is in flight (an
/// `INSERT` blocked behind another transaction's row, which the server still runs when that
/// transaction ends) is released on the same connection once that statement is done, so no
/// orphan claim is left for the lease. Outputs up to [`MAX_ENCODED_LEN`](idem_core::codec::MAX_ENCODED_LEN)
/// (64 MiB, what a codec may produce) are recorded; PostgreSQL's own limit, 1 GB per
/// `BYTEA` value, is far above it. The `key_preview` column is `TEXT`, which cannot hold
/// NUL: a NUL in the preview is stored as `␀` (U+2400); the key itself is the digest.
///
/// [`with_claim_order`]: PgStore::with_claim_order
#[derive(Clone)]
pub struct PgStore {
    order: Arc<Order>,
    pool: PgPool,
    table: Table,
    sql: Arc<Statements>,
}

struct Statements {
    read: SqlStr,
    insert: SqlStr,
    take_over: SqlStr,
    renew: SqlStr,
    complete: SqlStr,
    completed: SqlStr,
    release: SqlStr,
    purge: SqlStr,
    create_table: SqlStr,
    create_index: SqlStr,
}

impl Statements {
    fn new(t: &Table) -> Self {
        let sql = |template: &str| t.sql(Dialect::Postgres, template);
        Statements {
            // `remaining` is NULL for `+infinity` (a corrupt record); `-infinity` counts as
            // expired, as the takeover's and the purge's `expires_at <= now()` say.
            read: sql(
                "SELECT state::int8 AS state, fingerprint, outcome::int8 AS outcome, output, \
                        CASE WHEN isfinite(expires_at) THEN expires_at - now() \
                             WHEN expires_at <= now() THEN interval '-1 microsecond' \
                        END AS remaining \
                 FROM {t} WHERE key_digest = $1",
            ),
            insert: sql(
                "INSERT INTO {t} (key_digest, namespace, key_preview, fingerprint, state, token, \
                                  lease_until, expires_at) \
                 VALUES ($1, $2, $3, $4, 0, $5, now() + $6, now() + $6) \
                 ON CONFLICT (key_digest) DO NOTHING",
            ),
            take_over: sql(
                "UPDATE {t} SET namespace = $2, key_preview = $3, fingerprint = $4, state = 0, \
                   token = $5, outcome = NULL, output = NULL, lease_until = now() + $6, \
                   expires_at = now() + $6, created_at = now() \
                 WHERE key_digest = $1 AND expires_at <= now()",
            ),
            renew: sql(
                "UPDATE {t} SET lease_until = now() + $3, expires_at = now() + $3 \
                 WHERE key_digest = $1 AND token = $2 AND state = 0",
            ),
            complete: sql(
                "UPDATE {t} SET state = 1, outcome = $3, output = $4, lease_until = NULL, \
                   expires_at = now() + $5 \
                 WHERE key_digest = $1 AND token = $2 AND state = 0",
            ),
            completed: sql("SELECT 1 FROM {t} WHERE key_digest = $1 AND token = $2 AND state = 1"),
            release: sql("DELETE FROM {t} WHERE key_digest = $1 AND token = $2 AND state = 0"),
            purge: sql("DELETE FROM {t} WHERE key_digest IN ( \
                   SELECT key_digest FROM {t} WHERE expires_at <= now() \
                   LIMIT $1 FOR UPDATE SKIP LOCKED)"),
            create_table: sql("CREATE TABLE IF NOT EXISTS {t} ( \
                   key_digest  BYTEA PRIMARY KEY CHECK (octet_length(key_digest) = 32), \
                   namespace   TEXT NOT NULL, \
                   key_preview TEXT NOT NULL, \
                   fingerprint BYTEA NOT NULL, \
                   state       SMALLINT NOT NULL, \
                   token       BIGINT NOT NULL, \
                   outcome     SMALLINT, \
                   output      BYTEA, \
                   lease_until TIMESTAMPTZ, \
                   expires_at  TIMESTAMPTZ NOT NULL, \
                   created_at  TIMESTAMPTZ NOT NULL DEFAULT now())"),
            create_index: sql("CREATE INDEX IF NOT EXISTS {i} ON {t} (expires_at)"),
        }
    }
}

impl PgStore {
    /// A store on `pool`, in the table `idem_records`.
    pub fn new(pool: PgPool) -> Self {
        let table = Table::default();
        PgStore {
            order: Arc::default(),
            sql: Arc::new(Statements::new(&table)),
            pool,
            table,
        }
    }

    /// The same store in table `name` (an ASCII identifier; anything else is an error).
    pub fn with_table(self, name: &str) -> Result<Self, Error> {
        let table = Table::new(name)?;
        Ok(PgStore {
            order: Arc::new(Order::new(self.order.order())),
            sql: Arc::new(Statements::new(&table)),
            pool: self.pool,
            table,
        })
    }

    /// The same store with its claim's first statement fixed instead of learned from
    /// recent claims (see [`ClaimOrder`]).
    pub fn with_claim_order(self, order: ClaimOrder) -> Self {
        PgStore {
            order: Arc::new(Order::new(order)),
            ..self
        }
    }

    /// Creates the table and its expiry index if they are missing. Safe to call on every
    /// start and from several processes at once (serialized by an advisory lock).
    pub async fn migrate(&self) -> Result<(), Error> {
        let fail = |e| Error::Store(backend("migrate")(e));
        let mut tx = self.pool.begin().await.map_err(fail)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("idem-migrate:{}", self.table.name()))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        sqlx::query(self.sql.create_table.clone())
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        sqlx::query(self.sql.create_index.clone())
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    /// The pool it runs on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The table it uses.
    pub fn table(&self) -> &str {
        self.table.name()
    }
}

/// PostgreSQL intervals have microsecond resolution.
fn interval(d: Duration) -> Duration {
    Duration::from_micros(found::micros(d) as u64)
}

/// The record a claim's read found.
fn found(row: &PgRow) -> Result<Found, StoreError> {
    let column = backend("claim");
    let remaining: Option<PgInterval> = row.try_get("remaining").map_err(column)?;
    // Between two timestamps: days and microseconds, never months; saturating, as a
    // hand-written year-294276 deadline is further off than an i64 of microseconds reaches.
    let remaining_us = remaining.map(|r| {
        i64::from(r.days)
            .saturating_mul(86_400_000_000)
            .saturating_add(r.microseconds)
    });
    Ok(Found {
        state: row.try_get("state").map_err(column)?,
        fingerprint: row.try_get("fingerprint").map_err(column)?,
        outcome: row.try_get("outcome").map_err(column)?,
        output: row.try_get("output").map_err(column)?,
        remaining_us: found::remaining_us(remaining_us, "is +infinity")?,
    })
}

/// `text` as a `TEXT` column can hold it: PostgreSQL refuses NUL in text ("invalid byte
/// sequence"), so for the operators' columns (the preview, the namespace) it becomes `␀`.
/// Borrowed, without a copy, for text without NUL.
fn pg_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{2400}"))
    } else {
        Cow::Borrowed(text)
    }
}

fn token_value(token: Token) -> i64 {
    token.get() as i64
}

impl PgStore {
    /// The live record of the key, by a plain read.
    async fn read_live(
        &self,
        conn: &mut PgConnection,
        key: &Key,
    ) -> Result<Option<Claim>, StoreError> {
        let row = sqlx::query(self.sql.read.clone())
            .bind(&key.digest().as_bytes()[..])
            .fetch_optional(conn)
            .await
            .map_err(backend("claim"))?;
        match row.as_ref().map(found).transpose()? {
            Some(found) if found.live() => found.into_claim().map(Some),
            _ => Ok(None),
        }
    }

    /// The claim on one connection: the pool's for plain mode, the transaction's in
    /// transactional mode (where the insert blocks on a concurrent uncommitted claim).
    /// `insert_first` skips the read a replay needs, for a key that is likely new.
    async fn claim_on(
        &self,
        conn: &mut PgConnection,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
        token: i64,
        mut insert_first: bool,
    ) -> Result<Claim, StoreError> {
        let digest = &key.digest().as_bytes()[..];
        let lease = interval(lease);
        let (namespace, preview) = (pg_text(key.namespace()), pg_text(key.preview()));
        // The insert and the takeover write the same new claim.
        let write_claim = |sql: &SqlStr| {
            sqlx::query(sql.clone())
                .bind(digest)
                .bind(&*namespace)
                .bind(&*preview)
                .bind(&fingerprint.as_bytes()[..])
                .bind(token)
                .bind(lease)
        };
        for _ in 0..CLAIM_ATTEMPTS {
            if insert_first {
                let inserted = write_claim(&self.sql.insert)
                    .execute(&mut *conn)
                    .await
                    .map_err(backend("claim"))?;
                if inserted.rows_affected() == 1 {
                    return Ok(Claim::Claimed(Token::new(token as u64)));
                }
            }
            let row = sqlx::query(self.sql.read.clone())
                .bind(digest)
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend("claim"))?;
            // Absent (never there, or gone since the insert found it): insert it.
            let Some(row) = row else {
                insert_first = true;
                continue;
            };
            let found = found(&row)?;
            if found.live() {
                return found.into_claim();
            }
            // Expired: take it over, unless another claimer just did.
            let taken = write_claim(&self.sql.take_over)
                .execute(&mut *conn)
                .await
                .map_err(backend("claim"))?;
            if taken.rows_affected() == 1 {
                return Ok(Claim::Claimed(Token::new(token as u64)));
            }
            // Another claimer took it over just now: read its record.
            insert_first = false;
        }
        Err(StoreError::backend(
            "claim",
            "the record kept changing under concurrent claims",
        ))
    }

    async fn renew_on<'e>(
        &self,
        conn: impl PgExecutor<'e>,
        key: &Key,
        token: Token,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(self.sql.renew.clone())
            .bind(&key.digest().as_bytes()[..])
            .bind(token_value(token))
            .bind(interval(lease))
            .execute(conn)
            .await
            .map_err(backend("renew"))?;
        fenced(done.rows_affected())
    }

    /// The fenced `UPDATE`; when it finds no claim of `token`'s, whether `token` already
    /// completed the record (a retry after a lost reply: `Ok`, and the record stays as
    /// first written).
    async fn complete_on(
        &self,
        conn: &mut PgConnection,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let digest = &key.digest().as_bytes()[..];
        let done = sqlx::query(self.sql.complete.clone())
            .bind(digest)
            .bind(token_value(token))
            .bind(found::outcome_code(output.outcome))
            .bind(&output.bytes[..])
            .bind(interval(ttl))
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
        conn: impl PgExecutor<'e>,
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

impl cancel::ReleaseAfter for PgStore {
    type Conn = PoolConnection<Postgres>;

    async fn release_after(self, mut conn: Self::Conn, key: Key, token: Token) {
        cancel::released(self.release_on(&mut *conn, &key, token).await)
    }
}

#[async_trait]
impl Store for PgStore {
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
        let insert_first = !self.order.read_first();
        let claim = self
            .claim_on(conn, key, fingerprint, lease, token, insert_first)
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

    /// [`MAX_ENCODED_LEN`](idem_core::codec::MAX_ENCODED_LEN) (64 MiB): below PostgreSQL's
    /// 1 GB per `BYTEA` value, so the codec's limit is the one that binds.
    fn max_output_len(&self) -> usize {
        idem_core::codec::MAX_ENCODED_LEN
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        purge::in_batches(|| async {
            let done = sqlx::query(self.sql.purge.clone())
                .bind(PURGE_BATCH)
                .execute(&self.pool)
                .await
                .map_err(backend("purge"))?;
            Ok(done.rows_affected())
        })
        .await
    }
}

/// A claim that gave up waiting for a concurrent transaction (PostgreSQL's
/// "lock_not_available", 55P03) is a timeout; anything else stays as it is.
fn lock_timeout(error: StoreError, wait: Duration) -> StoreError {
    if let StoreError::Backend { source, .. } = &error
        && let Some(sqlx::Error::Database(db)) = source.downcast_ref::<sqlx::Error>()
        && db.code().as_deref() == Some("55P03")
    {
        return StoreError::Timeout {
            op: "claim",
            after: wait,
        };
    }
    error
}

#[async_trait]
impl<'c> TxStore<Transaction<'c, Postgres>> for PgStore {
    async fn claim_in(
        &self,
        tx: &mut Transaction<'c, Postgres>,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
        wait: Duration,
    ) -> Result<Claim, StoreError> {
        // A record committed before this transaction's snapshot: no lock to wait for.
        if self.order.read_first()
            && let Some(claim) = self.read_live(tx, key).await?
        {
            return self.order.learn(Ok(claim));
        }
        // `wait` is the lock timeout of the claim's statements only; the transaction's own
        // setting is put back afterwards.
        let previous: String = sqlx::query_scalar(
            "WITH previous AS MATERIALIZED (SELECT current_setting('lock_timeout') AS value) \
             SELECT value FROM previous, LATERAL (SELECT set_config('lock_timeout', $1, true)) AS set",
        )
        .bind(format!("{}ms", wait.as_millis().max(1)))
        .fetch_one(&mut **tx)
        .await
        .map_err(backend("claim"))?;
        let claim = self
            .claim_on(tx, key, fingerprint, lease, token::fresh(), true)
            .await;
        let claim = self.order.learn(claim).map_err(|e| lock_timeout(e, wait))?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(previous)
            .execute(&mut **tx)
            .await
            .map_err(backend("claim"))?;
        Ok(claim)
    }

    async fn complete_in(
        &self,
        tx: &mut Transaction<'c, Postgres>,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.complete_on(tx, key, token, output, ttl).await
    }

    async fn release_in(
        &self,
        tx: &mut Transaction<'c, Postgres>,
        key: &Key,
        token: Token,
    ) -> Result<(), StoreError> {
        self.release_on(&mut **tx, key, token).await
    }
}
