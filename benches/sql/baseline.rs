//! The hand-written baseline: what one would write without idem. The protocol is written
//! once; a [`Dialect`] gives each database's statements (`sqlite.rs`, `postgres.rs`,
//! `mysql.rs`) and what differs in binding and decoding them.

use crate::support::measure::{Mode, Protocol};
use crate::support::payload::{Receipt, Transfer, settle};
use sha2::{Digest, Sha256};
use sqlx::query::Query;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool,
    Row, SqlSafeStr, SqlStr, Type,
};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

pub(crate) const TTL: Duration = Duration::from_secs(24 * 60 * 60);
pub(crate) const LEASE: Duration = Duration::from_secs(30);
/// The baseline's namespace, as idem's is the function's path.
pub(crate) const NAMESPACE: &str = "sql::transfer";

/// What the baseline computes before it talks to the database, as idem does: the key's
/// digest, a readable preview, the request's fingerprint, a fencing token.
pub(crate) struct Prepared {
    pub(crate) digest: [u8; 32],
    pub(crate) preview: String,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) token: i64,
}

static TOKENS: AtomicI64 = AtomicI64::new(1);

pub(crate) fn prepare(req: &Transfer) -> Prepared {
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

pub(crate) fn encode(receipt: &Receipt) -> Vec<u8> {
    bincode::serde::encode_to_vec(receipt, bincode::config::standard()).unwrap()
}

/// The replay's checks: same request, decodable output.
fn replayed(p: &Prepared, fingerprint: &[u8], output: &[u8]) -> Receipt {
    assert_eq!(fingerprint, p.fingerprint, "payload mismatch");
    bincode::serde::decode_from_slice(output, bincode::config::standard())
        .unwrap()
        .0
}

/// Which hand-written protocol a baseline runs.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Variant {
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

/// The modes in which a variant differs from the baseline.
pub(crate) const WRITES: &[Mode] = &[Mode::Fresh, Mode::Tasks];
pub(crate) const REPLAYS: &[Mode] = &[Mode::Replay];
pub(crate) const ALL: &[Mode] = &[Mode::Fresh, Mode::Replay, Mode::Tasks];

/// The columns of a store's read, decoded by name as the store does: a completed, live
/// record's fingerprint and output.
fn store_row<R: Row>(row: &R, live: bool) -> (Vec<u8>, Vec<u8>)
where
    for<'a> &'a str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    assert_eq!(row.get::<i64, _>("state"), 1, "completed");
    assert_eq!(row.get::<Option<i64>, _>("outcome"), Some(0));
    assert!(live && row.get::<i64, _>("remaining_ms") > 0);
    let output: Option<Vec<u8>> = row.get("output");
    (row.get("fingerprint"), output.expect("an output"))
}

/// A dialect's statements on the baseline's table, built once.
pub(crate) struct Statements {
    /// Insert-if-absent of the in-progress row (digest, namespace, preview, fingerprint,
    /// token, lease).
    pub(crate) insert: SqlStr,
    /// The fenced update to completed (digest, token; output, TTL).
    pub(crate) complete: SqlStr,
    /// A completed, live record's fingerprint and output (digest).
    pub(crate) select: SqlStr,
    /// The store's own read, verbatim, where [`Variant::StoreRead`] runs.
    pub(crate) store_read: Option<SqlStr>,
    /// The store's former claim statement, where [`Variant::ClaimCte`] runs.
    pub(crate) claim_cte: Option<SqlStr>,
}

/// `template` on `table` (`{t}`), built once (a cheaply cloned `Arc<str>`).
pub(crate) fn sql(table: &str, template: &str) -> SqlStr {
    // Bench tables are named by `unique`: plain identifiers.
    AssertSqlSafe(Arc::<str>::from(template.replace("{t}", table))).into_sql_str()
}

/// What differs between databases in the hand-written protocol.
pub(crate) trait Dialect: Send + Sync + Sized + 'static {
    type Db: Database;
    /// A lease or TTL as the statements bind it.
    type Duration: for<'q> Encode<'q, Self::Db> + Type<Self::Db> + Send;

    /// Whether the statements number their parameters (`$1`, `?1`: the key's digest first,
    /// each value once) or take them in order (`?`: the values first, a value used twice
    /// bound twice, then the digest and token of the `WHERE`).
    const NUMBERED: bool;
    /// The hand-written variants measured besides the baseline, and in which modes.
    const VARIANTS: &[(&str, Variant, &[Mode])];

    /// Its statements on `table`.
    fn statements(table: &str) -> Statements;

    /// `d` as the statements bind it.
    fn duration(d: Duration) -> Self::Duration;

    /// How many rows a statement matched.
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// The `live` column of the store's read.
    fn live(row: &<Self::Db as Database>::Row) -> bool;

    /// [`Variant::ClaimCte`]: `Some((fingerprint, output))` of a recorded key, `None` when
    /// this call inserted the row.
    fn claim_cte(
        base: &Baseline<Self>,
        p: &Prepared,
    ) -> impl Future<Output = Option<(Vec<u8>, Vec<u8>)>> + Send {
        let _ = (base, p);
        async { unreachable!("the claim CTE is PostgreSQL's") }
    }

    /// `rounds` batches of `batch` fresh keys through the statements a coalesced store
    /// sends, by hand (`batched.rs`), on one connection of `pool` in `table`; `false` where
    /// none are written (only PostgreSQL's are).
    fn batches_by_hand(
        pool: &Pool<Self::Db>,
        table: &str,
        (rounds, batch): (usize, usize),
    ) -> impl Future<Output = bool> + Send {
        let _ = (pool, table, rounds, batch);
        async { false }
    }
}

/// The hand-written protocol on one database, in a table of the store's shape.
pub(crate) struct Baseline<D: Dialect> {
    pub(crate) pool: Pool<D::Db>,
    pub(crate) sql: Arc<Statements>,
    variant: Variant,
}

impl<D: Dialect> Clone for Baseline<D> {
    fn clone(&self) -> Self {
        Baseline {
            pool: self.pool.clone(),
            sql: self.sql.clone(),
            variant: self.variant,
        }
    }
}

type Args<D> = <<D as Dialect>::Db as Database>::Arguments;

impl<D: Dialect> Baseline<D> {
    /// The minimal protocol on `pool`, in `table`.
    pub(crate) fn new(pool: Pool<D::Db>, table: &str) -> Self {
        Baseline {
            pool,
            sql: Arc::new(D::statements(table)),
            variant: Variant::Minimal,
        }
    }

    /// The same, by another protocol.
    pub(crate) fn variant(&self, variant: Variant) -> Self {
        Baseline {
            variant,
            ..self.clone()
        }
    }
}

impl<D: Dialect> Baseline<D>
where
    for<'q> &'q [u8]: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Vec<u8>: Encode<'q, D::Db> + Type<D::Db>,
{
    fn insert(&self, p: &Prepared) -> Query<'static, D::Db, Args<D>> {
        let query = sqlx::query(self.sql.insert.clone())
            .bind(&p.digest[..])
            .bind(NAMESPACE)
            .bind(p.preview.as_str())
            .bind(&p.fingerprint[..])
            .bind(p.token)
            .bind(D::duration(LEASE));
        // In order: the lease goes into both deadlines.
        if D::NUMBERED {
            query
        } else {
            query.bind(D::duration(LEASE))
        }
    }

    fn complete(&self, p: &Prepared, output: Vec<u8>) -> Query<'static, D::Db, Args<D>> {
        let query = sqlx::query(self.sql.complete.clone());
        let ttl = D::duration(TTL);
        if D::NUMBERED {
            query
                .bind(&p.digest[..])
                .bind(p.token)
                .bind(output)
                .bind(ttl)
        } else {
            query
                .bind(output)
                .bind(ttl)
                .bind(&p.digest[..])
                .bind(p.token)
        }
    }

    fn select(&self, p: &Prepared) -> Query<'static, D::Db, Args<D>> {
        sqlx::query(self.sql.select.clone()).bind(&p.digest[..])
    }
}

impl<D: Dialect> Protocol for Baseline<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    Args<D>: IntoArguments<D::Db>,
    for<'q> &'q [u8]: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Vec<u8>: Encode<'q, D::Db> + Type<D::Db>,
    for<'r> (Vec<u8>, Vec<u8>): FromRow<'r, <D::Db as Database>::Row>,
    for<'a> &'a str: ColumnIndex<<D::Db as Database>::Row>,
    for<'r> i64: Decode<'r, D::Db>,
    for<'r> Vec<u8>: Decode<'r, D::Db>,
{
    async fn fresh(&self, req: Transfer) -> Receipt {
        let p = prepare(&req);
        match self.variant {
            Variant::ClaimCte => {
                assert!(D::claim_cte(self, &p).await.is_none(), "fresh keys are new");
            }
            Variant::ReadFirstOneConn => {
                let mut conn = self.pool.acquire().await.unwrap();
                let found = self.select(&p).fetch_optional(&mut *conn).await.unwrap();
                assert!(found.is_none(), "fresh keys are new");
                let claimed = self.insert(&p).execute(&mut *conn).await.unwrap();
                assert_eq!(D::rows_affected(&claimed), 1, "fresh keys are new");
            }
            _ => {
                let claimed = self.insert(&p).execute(&self.pool).await.unwrap();
                assert_eq!(D::rows_affected(&claimed), 1, "fresh keys are new");
            }
        }
        let receipt = settle(&req);
        let done = self
            .complete(&p, encode(&receipt))
            .execute(&self.pool)
            .await
            .unwrap();
        assert_eq!(D::rows_affected(&done), 1, "fenced update");
        receipt
    }

    async fn replay(&self, req: Transfer) -> Receipt {
        let p = prepare(&req);
        let (fingerprint, output): (Vec<u8>, Vec<u8>) = match self.variant {
            Variant::ClaimCte => D::claim_cte(self, &p).await.expect("a recorded key"),
            Variant::InsertFirst => {
                let mut conn = self.pool.acquire().await.unwrap();
                let claimed = self.insert(&p).execute(&mut *conn).await.unwrap();
                assert_eq!(D::rows_affected(&claimed), 0, "a recorded key");
                let read = self.select(&p).fetch_one(&mut *conn).await.unwrap();
                FromRow::from_row(&read).unwrap()
            }
            Variant::StoreRead => {
                let read = self.sql.store_read.clone().expect("the store's read");
                let row = sqlx::query(read)
                    .bind(&p.digest[..])
                    .fetch_one(&self.pool)
                    .await
                    .unwrap();
                store_row(&row, D::live(&row))
            }
            _ => {
                let read = self.select(&p).fetch_one(&self.pool).await.unwrap();
                FromRow::from_row(&read).unwrap()
            }
        };
        replayed(&p, &fingerprint, &output)
    }
}
