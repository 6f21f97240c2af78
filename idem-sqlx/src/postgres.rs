//! PostgreSQL: [`PgStore`], and what its dialect does its own way.

use idem_core::store::Claim;
use idem_core::{Error, StoreError};
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::{PgConnection, PgQueryResult, PgRow};
use sqlx::{Row, SqlStr, Transaction};
use std::borrow::Cow;
use std::time::Duration;

use crate::batch::{BatchRow, Completion};
use crate::claim::{CLAIM_ATTEMPTS, NewClaim, kept_changing};
use crate::dialect::{Dialect, Placeholders, Templates};
use crate::duration::micros;
use crate::error::backend;
use crate::found::{self, Found};
use crate::store::{Common, SqlStore};
use crate::table::{Quoting, Table};

/// Idempotency records in PostgreSQL: exactly-once across every process sharing the
/// database.
///
/// Built from your pool; create the table with [`migrate`](SqlStore::migrate). A claim is a
/// `SELECT` by primary key and an `INSERT … ON CONFLICT DO NOTHING`, in the order the
/// store's recent claims call for: the read first while they mostly find records (retries,
/// redeliveries — and when the store is new), so that a replay is that one read and writes
/// nothing; the insert first while they are mostly first calls, so that a fresh key is that
/// one insert (then one fenced `UPDATE` completes it). A wrong guess costs the other
/// statement; an insert that finds the key writes nothing. [`with_claim_order`] fixes the
/// order instead. Taking over an expired record costs the read and one `UPDATE … WHERE
/// expires_at <= now()` (after the insert, when inserting first). (One statement can do
/// both — an `INSERT` and a read of the row in one CTE — but it costs the server more than
/// either plain statement; BENCHMARKS.md has the figures.)
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
/// [`with_claim_order`]: SqlStore::with_claim_order
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub type PgStore = SqlStore<PgDialect>;

/// The PostgreSQL dialect of [`SqlStore`]: see [`PgStore`].
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct PgDialect;

/// Its claim's writes, and the statements of coalesced batches.
pub struct Statements {
    insert: SqlStr,
    take_over: SqlStr,
    insert_batch: SqlStr,
    read_batch: SqlStr,
    complete_batch: SqlStr,
}

/// What a claim reads of a record, for [`Dialect::found`]. `remaining` is NULL for
/// `+infinity` (a corrupt record); `-infinity` counts as expired, as the takeover's and the
/// purge's `expires_at <= now()` say.
macro_rules! read_columns {
    () => {
        "state::int8 AS state, fingerprint, outcome::int8 AS outcome, output, \
         CASE WHEN isfinite(expires_at) THEN expires_at - now() \
              WHEN expires_at <= now() THEN interval '-1 microsecond' \
         END AS remaining"
    };
}

impl Dialect for PgDialect {
    type Database = sqlx::Postgres;
    // An interval: microsecond resolution.
    type Duration = Duration;
    type Statements = Statements;

    const QUOTING: Quoting = Quoting::Postgres;
    const PLACEHOLDERS: Placeholders = Placeholders::Numbered;
    const TEMPLATES: Templates = Templates {
        read: concat!(
            "SELECT ",
            read_columns!(),
            " FROM {t} WHERE key_digest = $1"
        ),
        renew: "UPDATE {t} SET lease_until = now() + $3, expires_at = now() + $3 \
                WHERE key_digest = $1 AND token = $2 AND state = 0",
        complete: "UPDATE {t} SET state = 1, outcome = $3, output = $4, lease_until = NULL, \
                     expires_at = now() + $5 \
                   WHERE key_digest = $1 AND token = $2 AND state = 0",
        completed: "SELECT 1 FROM {t} WHERE key_digest = $1 AND token = $2 AND state = 1",
        release: "DELETE FROM {t} WHERE key_digest = $1 AND token = $2 AND state = 0",
        purge: "DELETE FROM {t} WHERE key_digest IN ( \
                  SELECT key_digest FROM {t} WHERE expires_at <= now() \
                  LIMIT $1 FOR UPDATE SKIP LOCKED)",
        schema: &[
            "CREATE TABLE IF NOT EXISTS {t} ( \
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
               created_at  TIMESTAMPTZ NOT NULL DEFAULT now())",
            "CREATE INDEX IF NOT EXISTS {i} ON {t} (expires_at)",
        ],
    };

    fn statements(table: &Table) -> Statements {
        let sql = |template: &str| Self::sql(table, template);
        Statements {
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
            // Leases and TTLs as microseconds: one array type for every duration.
            insert_batch: sql(
                "INSERT INTO {t} (key_digest, namespace, key_preview, fingerprint, state, token, \
                                  lease_until, expires_at) \
                 SELECT d, n, p, f, 0, tk, now() + l * interval '1 microsecond', \
                        now() + l * interval '1 microsecond' \
                 FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bytea[], $5::int8[], \
                             $6::int8[]) AS u(d, n, p, f, tk, l) \
                 ORDER BY d \
                 ON CONFLICT (key_digest) DO NOTHING RETURNING key_digest",
            ),
            read_batch: sql(concat!(
                "SELECT key_digest, token, ",
                read_columns!(),
                " FROM {t} WHERE key_digest = ANY($1)"
            )),
            complete_batch: sql(
                "UPDATE {t} AS r SET state = 1, outcome = u.o, output = u.b, lease_until = NULL, \
                   expires_at = now() + u.ttl * interval '1 microsecond' \
                 FROM unnest($1::bytea[], $2::int8[], $3::int2[], $4::bytea[], $5::int8[]) \
                   AS u(d, tk, o, b, ttl) \
                 WHERE r.key_digest = u.d AND r.token = u.tk AND r.state = 0",
            ),
        }
    }

    /// PostgreSQL intervals have microsecond resolution.
    fn duration(d: Duration) -> Duration {
        Duration::from_micros(micros(d) as u64)
    }

    fn found(row: &PgRow) -> Result<Found, StoreError> {
        let column = backend("claim");
        let remaining: Option<PgInterval> = row.try_get("remaining").map_err(column)?;
        // Between two timestamps: days and microseconds, never months; saturating, as a
        // hand-written year-294276 deadline is further off than an i64 of microseconds
        // reaches.
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

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    /// The claim on one connection: the pool's for plain mode, the transaction's in
    /// transactional mode (where the insert blocks on a concurrent uncommitted claim).
    /// Inserting first skips the read a replay needs, for a key that is likely new.
    async fn claim(
        store: &PgStore,
        conn: &mut PgConnection,
        claim: NewClaim<'_>,
        read_first: bool,
    ) -> Result<Claim, StoreError> {
        let digest = claim.digest();
        let lease = Self::duration(claim.lease);
        let key = claim.key;
        let (namespace, preview) = (pg_text(key.namespace()), pg_text(key.preview()));
        // The insert and the takeover write the same new claim.
        let write_claim = |sql: &SqlStr| {
            sqlx::query(sql.clone())
                .bind(digest)
                .bind(&*namespace)
                .bind(&*preview)
                .bind(&claim.fingerprint.as_bytes()[..])
                .bind(claim.token)
                .bind(lease)
        };
        let mut insert_first = !read_first;
        for _ in 0..CLAIM_ATTEMPTS {
            if insert_first {
                let inserted = write_claim(&store.sql.own.insert)
                    .execute(&mut *conn)
                    .await
                    .map_err(backend("claim"))?;
                if inserted.rows_affected() == 1 {
                    return Ok(claim.claimed());
                }
            }
            // Absent (never there, or gone since the insert found it): insert it.
            let Some(found) = Self::read(conn, &store.sql.read, digest).await? else {
                insert_first = true;
                continue;
            };
            if found.live() {
                return found.into_claim();
            }
            // Expired: take it over, unless another claimer just did.
            let taken = write_claim(&store.sql.own.take_over)
                .execute(&mut *conn)
                .await
                .map_err(backend("claim"))?;
            if taken.rows_affected() == 1 {
                return Ok(claim.claimed());
            }
            // Another claimer took it over just now: read its record.
            insert_first = false;
        }
        Err(kept_changing())
    }

    async fn claim_in(
        store: &PgStore,
        tx: &mut Transaction<'_, sqlx::Postgres>,
        claim: NewClaim<'_>,
        wait: Duration,
    ) -> Result<Claim, StoreError> {
        // A record committed before this transaction's snapshot: no lock to wait for.
        if store.order.read_first()
            && let Some(found) = Self::read(tx, &store.sql.read, claim.digest()).await?
            && found.live()
        {
            return store.order.learn(found.into_claim());
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
        let claimed = Self::claim(store, tx, claim, false).await;
        let claimed = store
            .order
            .learn(claimed)
            .map_err(|e| lock_timeout(e, wait))?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(previous)
            .execute(&mut **tx)
            .await
            .map_err(backend("claim"))?;
        Ok(claimed)
    }

    async fn insert_batch(
        store: &PgStore,
        conn: &mut PgConnection,
        claims: &[NewClaim<'_>],
    ) -> Result<Option<Vec<Vec<u8>>>, sqlx::Error> {
        let keys = || claims.iter().map(|c| c.key);
        let texts: (Vec<Cow<'_, str>>, Vec<Cow<'_, str>>) = keys()
            .map(|k| (pg_text(k.namespace()), pg_text(k.preview())))
            .unzip();
        sqlx::query_scalar(store.sql.own.insert_batch.clone())
            .bind(claims.iter().map(NewClaim::digest).collect::<Vec<_>>())
            .bind(texts.0.iter().map(|t| &**t).collect::<Vec<&str>>())
            .bind(texts.1.iter().map(|t| &**t).collect::<Vec<&str>>())
            .bind(
                claims
                    .iter()
                    .map(|c| &c.fingerprint.as_bytes()[..])
                    .collect::<Vec<_>>(),
            )
            .bind(claims.iter().map(|c| c.token).collect::<Vec<_>>())
            .bind(claims.iter().map(|c| micros(c.lease)).collect::<Vec<_>>())
            .fetch_all(conn)
            .await
            .map(Some)
    }

    async fn read_batch(
        store: &PgStore,
        conn: &mut PgConnection,
        digests: &[&[u8]],
    ) -> Result<Vec<BatchRow>, sqlx::Error> {
        let rows = sqlx::query(store.sql.own.read_batch.clone())
            .bind(digests)
            .fetch_all(conn)
            .await?;
        BatchRow::all::<Self>(&rows)
    }

    async fn complete_batch(
        store: &PgStore,
        conn: &mut PgConnection,
        items: &[Completion<'_>],
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(store.sql.own.complete_batch.clone())
            .bind(items.iter().map(|c| c.digest).collect::<Vec<_>>())
            .bind(items.iter().map(|c| c.token).collect::<Vec<_>>())
            .bind(items.iter().map(|c| c.outcome).collect::<Vec<_>>())
            .bind(items.iter().map(|c| c.bytes).collect::<Vec<_>>())
            .bind(items.iter().map(|c| micros(c.ttl)).collect::<Vec<_>>())
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }

    async fn migrate(store: &PgStore) -> Result<(), Error> {
        let fail = |e| Error::Store(backend("migrate")(e));
        let mut tx = store.pool.begin().await.map_err(fail)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("idem-migrate:{}", store.table.name()))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        Self::create_schema(store, &mut tx).await.map_err(fail)?;
        tx.commit().await.map_err(fail)
    }
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
