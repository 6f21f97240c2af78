//! `SqlStore`: the store, written once for every SQL database; what differs is its
//! [`Dialect`].

use async_trait::async_trait;
use idem_core::store::{Claim, Output, Token};
use idem_core::{Error, Fingerprint, Key, Store, StoreError, TxStore};
use sqlx::pool::PoolConnection;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, Pool, SqlStr, Transaction, Type};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::{self, BatchRow};
use crate::cancel::{self, ClaimConnection};
use crate::claim::{CLAIM_ATTEMPTS, NewClaim};
use crate::coalesce::{self, Coalescer, MAX_BATCHED_OUTPUT};
use crate::columns::outcome_code;
use crate::dialect::{Conn, Dialect, Placeholders};
use crate::error::backend;
use crate::found::Found;
use crate::order::{ClaimOrder, Order};
use crate::purge::{self, PURGE_BATCH};
use crate::statements::Statements;
use crate::table::Table;
use crate::token;
use crate::warm::Warm;

/// Idempotency records in one table of a SQL database, through a sqlx pool: one store for
/// every database, with a dialect (`D`: `Postgres`, `Sqlite` or `MySql`) for what differs.
/// Use it by its aliases, `PgStore`, `SqliteStore` and `MySqlStore` (features `postgres`,
/// `sqlite`, `mysql`), whose docs say what each database's claim costs and what its limits
/// are.
///
/// Built from your pool; the table is created by [`migrate`](SqlStore::migrate). All times
/// come from the database's clock. A claim is a read of the key and an insert of the claim,
/// in the order its recent claims call for (see [`ClaimOrder`]); `complete`, `renew` and
/// `release` are one fenced statement each, which acts only while the caller's token owns
/// the record.
///
/// The statements of batches (`Store::claim_batch`, `complete_batch`, and coalesced calls)
/// keep their connection out of the pool for about 20 ms after they answer (40 at most),
/// for the next batch statement — at most 4, and a quarter of the pool's connections (none
/// in a pool under 4) — so that a stream of batches does not pay sqlx's ping of every
/// returned connection and a cold connection each time; a `Pool::close` right after waits
/// that long.
pub struct SqlStore<D: Dialect> {
    pub(crate) order: Arc<Order>,
    pub(crate) pool: Pool<D::Database>,
    pub(crate) table: Table,
    pub(crate) sql: Arc<Statements<D>>,
    /// The dialect's state (MySQL: what it learned of the server), shared by clones.
    pub(crate) dialect: D,
    /// The queues of coalesced claims and completes, if on ([`SqlStore::with_coalescing`]).
    pub(crate) coalescer: Option<Arc<Coalescer>>,
    /// Connections kept for the next statement of an explicit batch.
    warm: Arc<Warm<D::Database>>,
}

impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        SqlStore {
            order: self.order.clone(),
            pool: self.pool.clone(),
            table: self.table.clone(),
            sql: self.sql.clone(),
            dialect: self.dialect.clone(),
            coalescer: self.coalescer.clone(),
            warm: self.warm.clone(),
        }
    }
}

impl<D: Dialect> SqlStore<D> {
    /// A store on `pool`, in the table `idem_records`.
    pub fn new(pool: Pool<D::Database>) -> Self {
        let table = Table::default();
        SqlStore {
            order: Arc::default(),
            sql: Arc::new(Statements::new(&table)),
            pool,
            table,
            dialect: D::default(),
            coalescer: None,
            warm: Arc::default(),
        }
    }

    /// The same store in table `name` (an ASCII identifier; anything else is an error).
    pub fn with_table(self, name: &str) -> Result<Self, Error> {
        let table = Table::new(name)?;
        Ok(SqlStore {
            order: Arc::new(Order::new(self.order.order())),
            sql: Arc::new(Statements::new(&table)),
            pool: self.pool,
            table,
            dialect: self.dialect,
            coalescer: self.coalescer,
            warm: self.warm,
        })
    }

    /// The same store with its claim's first statement fixed instead of learned from
    /// recent claims (see [`ClaimOrder`]).
    pub fn with_claim_order(self, order: ClaimOrder) -> Self {
        SqlStore {
            order: Arc::new(Order::new(order)),
            ..self
        }
    }

    /// The same store with claims and completes coalesced (`true`) or not (`false`, the
    /// default): while one claim statement is in flight, the claims other tasks make
    /// meanwhile queue, and when it returns they go together, as a few multi-row
    /// statements for the whole batch (one commit instead of one per call); the same for
    /// completes. A call that finds nothing in flight runs its own statements at once, as
    /// without coalescing. Each caller gets what its own call would have: the same
    /// tokens, fencing, takeover of expired records, payload check and "a replay writes
    /// nothing"; two claims of one key in a batch get one winner and one "in progress". A
    /// caller cancelled while queued or in flight leaves no claim behind. `renew`,
    /// `release`, outputs over 16 KiB and transactional mode (`tx =`) are not coalesced.
    ///
    /// Per database: PostgreSQL binds the batch as arrays (`INSERT … SELECT FROM
    /// unnest(…) ON CONFLICT DO NOTHING RETURNING`, `SELECT … WHERE key_digest = ANY(…)`
    /// for the keys it did not insert, `UPDATE … FROM unnest(…)`); SQLite and
    /// MySQL/MariaDB as multi-row `VALUES` lists (`INSERT … ON CONFLICT DO NOTHING
    /// RETURNING` / `INSERT IGNORE`, then `SELECT … IN (…)` — on MySQL of every key, read
    /// back by token — and an `UPDATE` joined with the rows). BENCHMARKS.md
    /// ("coalescing") has what it gains and costs.
    pub fn with_coalescing(self, on: bool) -> Self {
        SqlStore {
            coalescer: on.then(Arc::default),
            ..self
        }
    }

    /// Creates the table and its expiry index if they are missing. Safe to call on every
    /// start and from several processes at once: PostgreSQL serializes it with an advisory
    /// lock, SQLite with a `BEGIN IMMEDIATE` transaction (waiting up to the pool's busy
    /// timeout), MySQL with a named lock (`GET_LOCK('idem-migrate:<table>')`).
    pub async fn migrate(&self) -> Result<(), Error> {
        D::migrate(self).await
    }

    /// The pool it runs on.
    pub fn pool(&self) -> &Pool<D::Database> {
        &self.pool
    }

    /// The table it uses.
    pub fn table(&self) -> &str {
        self.table.name()
    }
}

/// A fenced statement touched the owner's row (1) or found it gone or taken over (0).
fn fenced(rows: u64) -> Result<(), StoreError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost)
    }
}

/// What every dialect runs the same way, written once. A trait implemented for every
/// dialect (rather than methods of `SqlStore`) so that the bounds saying its database can
/// bind and run these statements are written once, on that impl: Rust does not carry such
/// bounds along with `D: Dialect`, and would want them on every impl that uses them.
pub trait Common: Dialect {
    /// The record of `digest` by `read` (the dialect's plain or locking read), if any.
    fn read(
        conn: &mut Conn<Self>,
        read: &SqlStr,
        digest: &[u8],
    ) -> impl Future<Output = Result<Option<Found>, StoreError>> + Send;

    /// Runs the schema's statements, for the dialect's `migrate`.
    fn create_schema(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// The fenced renewal of `token`'s lease.
    fn renew_on(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        key: &Key,
        token: Token,
        lease: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The fenced `UPDATE`; when it matches no claim of `token`'s, whether `token` already
    /// completed the record (a retry after a lost reply: `Ok`, and the record stays as
    /// first written).
    fn complete_on(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The fenced removal of `token`'s claim.
    fn release_on(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        key: &Key,
        token: Token,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One batch of the purge: how many expired rows it deleted.
    fn purge_batch(store: &SqlStore<Self>) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The batch read of the dialects without array parameters (MySQL, SQLite): `columns`
    /// (the key's digest, its token and the record's) of `digests`' rows, by `key_digest
    /// IN (?, …)` with as many placeholders as [`batch::rows_for`] its digests.
    fn read_in(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        columns: &str,
        digests: &[&[u8]],
    ) -> impl Future<Output = Result<Vec<BatchRow>, sqlx::Error>> + Send;
}

impl<D: Dialect> Common for D
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Database>,
    <D::Database as Database>::Arguments: sqlx::IntoArguments<D::Database>,
    for<'q> &'q [u8]: Encode<'q, D::Database> + Type<D::Database>,
    for<'q> i64: Encode<'q, D::Database> + Type<D::Database>,
    for<'q> i16: Encode<'q, D::Database> + Type<D::Database>,
    for<'r> Vec<u8>: Decode<'r, D::Database> + Type<D::Database>,
    for<'r> i64: Decode<'r, D::Database>,
    for<'s> &'s str: ColumnIndex<<D::Database as Database>::Row>,
{
    async fn read(
        conn: &mut Conn<D>,
        read: &SqlStr,
        digest: &[u8],
    ) -> Result<Option<Found>, StoreError> {
        let row = sqlx::query(read.clone())
            .bind(digest)
            .fetch_optional(conn)
            .await
            .map_err(backend("claim"))?;
        row.as_ref().map(D::found).transpose()
    }

    async fn create_schema(store: &SqlStore<D>, conn: &mut Conn<D>) -> Result<(), sqlx::Error> {
        for statement in &store.sql.schema {
            sqlx::query(statement.clone()).execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn renew_on(
        store: &SqlStore<D>,
        conn: &mut Conn<D>,
        key: &Key,
        token: Token,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let (digest, token, lease) = (
            &key.digest().as_bytes()[..],
            token::value(token),
            D::duration(lease),
        );
        let query = sqlx::query(store.sql.renew.clone());
        let query = match D::PLACEHOLDERS {
            Placeholders::Numbered => query.bind(digest).bind(token).bind(lease),
            Placeholders::Positional => query.bind(lease).bind(lease).bind(digest).bind(token),
        };
        let done = query.execute(conn).await.map_err(backend("renew"))?;
        fenced(D::rows_affected(&done))
    }

    async fn complete_on(
        store: &SqlStore<D>,
        conn: &mut Conn<D>,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let (digest, token, outcome, bytes, ttl) = (
            &key.digest().as_bytes()[..],
            token::value(token),
            outcome_code(output.outcome),
            &output.bytes[..],
            D::duration(ttl),
        );
        let query = sqlx::query(store.sql.complete.clone());
        let query = match D::PLACEHOLDERS {
            Placeholders::Numbered => query
                .bind(digest)
                .bind(token)
                .bind(outcome)
                .bind(bytes)
                .bind(ttl),
            Placeholders::Positional => query
                .bind(outcome)
                .bind(bytes)
                .bind(ttl)
                .bind(digest)
                .bind(token),
        };
        let done = query
            .execute(&mut *conn)
            .await
            .map_err(backend("complete"))?;
        if D::rows_affected(&done) == 1 {
            return Ok(());
        }
        let completed = sqlx::query(store.sql.completed.clone())
            .bind(digest)
            .bind(token)
            .fetch_optional(conn)
            .await
            .map_err(backend("complete"))?;
        fenced(u64::from(completed.is_some()))
    }

    async fn release_on(
        store: &SqlStore<D>,
        conn: &mut Conn<D>,
        key: &Key,
        token: Token,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(store.sql.release.clone())
            .bind(&key.digest().as_bytes()[..])
            .bind(token::value(token))
            .execute(conn)
            .await
            .map_err(backend("release"))?;
        fenced(D::rows_affected(&done))
    }

    async fn purge_batch(store: &SqlStore<D>) -> Result<u64, StoreError> {
        let mut deadlocks = 0;
        loop {
            match sqlx::query(store.sql.purge.clone())
                .bind(PURGE_BATCH)
                .execute(&store.pool)
                .await
            {
                Ok(done) => return Ok(D::rows_affected(&done)),
                // MySQL: a claim taking over an expired row can deadlock with the range
                // delete; the batch is rolled back whole, so running it again is safe.
                Err(e) if D::is_deadlock(&e) && deadlocks < CLAIM_ATTEMPTS => deadlocks += 1,
                Err(e) => return Err(backend("purge")(e)),
            }
        }
    }

    #[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
    async fn read_in(
        store: &SqlStore<D>,
        conn: &mut Conn<D>,
        columns: &str,
        digests: &[&[u8]],
    ) -> Result<Vec<BatchRow>, sqlx::Error> {
        // No keys, no statement: padded to one placeholder with no value bound, it is one
        // sqlx refuses after preparing it, which leaves MySQL's connection out of step.
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let list = batch::repeat("?", batch::rows_for(digests.len()), ", ");
        let sql = format!("SELECT {columns} FROM {{t}} WHERE key_digest IN ({list})");
        let mut query = sqlx::query(D::sql(&store.table, &sql));
        for digest in batch::padded(digests) {
            query = query.bind(*digest);
        }
        let rows = query.fetch_all(conn).await?;
        BatchRow::all::<D>(&rows)
    }
}

impl<D: Common> SqlStore<D> {
    /// A connection from the pool, for `op`. Boxed: sqlx's `acquire` future is ~8.6 KB,
    /// and held inline it would make every call's future as large — copied whole at each
    /// move (the `Box::pin` of every store call among them) whether it acquires or not,
    /// which was a quarter of a coalesced call's CPU time.
    pub(crate) async fn connection(
        &self,
        op: &'static str,
    ) -> Result<PoolConnection<D::Database>, StoreError> {
        Box::pin(self.pool.acquire()).await.map_err(backend(op))
    }

    /// A connection for a statement of an explicit batch: the one the last batch statement
    /// left warm (see `warm.rs`), else one from the pool.
    pub(crate) async fn batch_connection(
        &self,
        op: &'static str,
    ) -> Result<PoolConnection<D::Database>, StoreError> {
        match self.warm.take() {
            Some(conn) => Ok(conn),
            None => self.connection(op).await,
        }
    }

    /// Keeps the connection of a batch statement that went well for the next one.
    pub(crate) fn keep_warm(&self, conn: PoolConnection<D::Database>) {
        self.warm.keep(&self.pool, conn);
    }

    /// A claim by its own statements, on a connection of its own that guards it against
    /// cancellation.
    async fn claim_alone(&self, claim: NewClaim<'_>) -> Result<Claim, StoreError> {
        let conn = self.connection("claim").await?;
        let mut guard = ClaimConnection::new(self, std::slice::from_ref(&claim), conn);
        let Some(conn) = guard.conn() else {
            return Err(StoreError::backend("claim", "no connection"));
        };
        let read_first = self.order.read_first();
        let claimed = D::claim(self, conn, claim, read_first).await;
        drop(guard.disarm());
        self.order.learn(claimed)
    }

    /// A `complete` by its own statement.
    async fn complete_alone(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.connection("complete").await?;
        D::complete_on(self, &mut conn, key, token, output, ttl).await
    }
}

impl<D: Common> cancel::ReleaseAfter for SqlStore<D> {
    type Conn = PoolConnection<D::Database>;

    async fn release_after(self, mut conn: Self::Conn, claims: Vec<(Key, Token)>) {
        let mut claims = claims.into_iter();
        while let Some((key, token)) = claims.next() {
            match D::release_on(&self, &mut conn, &key, token).await {
                Ok(()) | Err(StoreError::LeaseLost) => {}
                // The connection is out of step: sqlx's MySQL connection reads what the
                // cancelled statement left on it as this one's reply. So that statement
                // is done, and the releases can go on any connection: the pool's.
                Err(_) => {
                    conn.close_on_drop();
                    drop(conn);
                    for (key, token) in std::iter::once((key, token)).chain(claims) {
                        cancel::released(self.release(&key, token).await);
                    }
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl<D: Common> Store for SqlStore<D> {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let claim = NewClaim {
            key,
            fingerprint,
            lease,
            token: token::fresh(),
        };
        match &self.coalescer {
            Some(coalescer) => {
                coalesce::claim(self, coalescer, claim, self.claim_alone(claim)).await
            }
            None => self.claim_alone(claim).await,
        }
    }

    /// One batch (one multi-row insert of the claims, and a read where needed), whether
    /// coalescing is on or not.
    async fn claim_batch(
        &self,
        claims: &[(&Key, &Fingerprint)],
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        coalesce::claim_batch(self, claims, lease).await
    }

    /// One batch (one multi-row fenced `UPDATE`), whether coalescing is on or not.
    async fn complete_batch(
        &self,
        records: &[(&Key, Token, Output)],
        ttl: Duration,
    ) -> Vec<Result<(), StoreError>> {
        coalesce::complete_batch(self, records, ttl).await
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        let mut conn = self.connection("renew").await?;
        D::renew_on(self, &mut conn, key, token, lease).await
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match &self.coalescer {
            Some(coalescer) if output.bytes.len() <= MAX_BATCHED_OUTPUT => {
                let alone = self.complete_alone(key, token, output.clone(), ttl);
                coalesce::complete(self, coalescer, (key, token, &output, ttl), alone).await
            }
            _ => self.complete_alone(key, token, output, ttl).await,
        }
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let mut conn = self.connection("release").await?;
        D::release_on(self, &mut conn, key, token).await
    }

    fn release_on_drop(&self, key: &Key, token: Token) {
        cancel::release_in_background(self, key, token);
    }

    /// What the database takes (see the store's docs): 64 MiB, the codec's limit, on
    /// PostgreSQL and SQLite; MySQL's `max_allowed_packet` less 1 KiB.
    fn max_output_len(&self) -> usize {
        self.dialect.max_output_len()
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        purge::in_batches(|| D::purge_batch(self)).await
    }
}

#[async_trait]
impl<'c, D: Common> TxStore<Transaction<'c, D::Database>> for SqlStore<D> {
    async fn claim_in(
        &self,
        tx: &mut Transaction<'c, D::Database>,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
        wait: Duration,
    ) -> Result<Claim, StoreError> {
        let claim = NewClaim {
            key,
            fingerprint,
            lease,
            token: token::fresh(),
        };
        D::claim_in(self, tx, claim, wait).await
    }

    async fn complete_in(
        &self,
        tx: &mut Transaction<'c, D::Database>,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        D::complete_on(self, tx, key, token, output, ttl).await
    }

    async fn release_in(
        &self,
        tx: &mut Transaction<'c, D::Database>,
        key: &Key,
        token: Token,
    ) -> Result<(), StoreError> {
        D::release_on(self, tx, key, token).await
    }
}
