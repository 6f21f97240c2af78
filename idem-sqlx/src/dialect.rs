//! What differs between SQL databases, for the one generic [`SqlStore`].

use idem_core::store::Claim;
use idem_core::{Error, StoreError};
use sqlx::{Database, Encode, SqlStr, Transaction, Type};
use std::future::Future;
use std::time::Duration;

use crate::batch::{BatchRow, Completion};
use crate::claim::NewClaim;
use crate::found::Found;
use crate::store::SqlStore;
use crate::table::{Quoting, Table};

/// A database's connection.
pub(crate) type Conn<D> = <<D as Dialect>::Database as Database>::Connection;

/// One SQL database's side of [`SqlStore`]: its statements, how it binds a duration and
/// decodes a row, and what it does its own way (the claim, the transactional claim,
/// `migrate`). Everything else — the fenced `renew`/`complete`/`release`, the purge, the
/// cancel-safe claim, the learned claim order — is written once, in `store.rs`
/// ([`Common`](crate::store::Common)).
///
/// Not public (sealed): implemented by [`PgDialect`](crate::PgDialect), [`SqliteDialect`](crate::SqliteDialect) and
/// [`MySqlDialect`](crate::MySqlDialect). A value of it is the store's per-database state (MySQL: the
/// `max_allowed_packet` it learned), shared by the store's clones.
pub trait Dialect: Clone + Default + Send + Sync + 'static {
    /// The sqlx database.
    type Database: Database;
    /// A lease or TTL as its statements bind it.
    type Duration: for<'q> Encode<'q, Self::Database> + Type<Self::Database> + Copy + Send;
    /// Its own statements: the writes of its claim, built once per table.
    type Statements: Send + Sync + 'static;

    /// How it quotes the table's name.
    const QUOTING: Quoting;
    /// How its statements take their parameters.
    const PLACEHOLDERS: Placeholders;
    /// The statements every database runs alike (`{t}`: the table, `{i}`: its index).
    const TEMPLATES: Templates;

    /// `template` as a statement on `table`.
    fn sql(table: &Table, template: &str) -> SqlStr {
        table.sql(Self::QUOTING, template)
    }

    /// Its own statements on `table`.
    fn statements(table: &Table) -> Self::Statements;

    /// `d` as its statements bind a lease or TTL.
    fn duration(d: Duration) -> Self::Duration;

    /// The record a read of [`Templates::read`] (or its own locking read) returned.
    fn found(row: &<Self::Database as Database>::Row) -> Result<Found, StoreError>;

    /// The claim outcome for a live row it read (MySQL checks more of the row first).
    fn live_claim(found: Found) -> Result<Claim, StoreError> {
        found.into_claim()
    }

    /// How many rows a statement matched.
    fn rows_affected(done: &<Self::Database as Database>::QueryResult) -> u64;

    /// A claim on `conn`: reading first if `read_first`, else inserting first. In plain
    /// mode `conn` is a pooled connection, which the store guards against cancellation;
    /// a dialect's [`claim_in`](Dialect::claim_in) may run it on its transaction.
    fn claim(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        claim: NewClaim<'_>,
        read_first: bool,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// A claim inside the caller's transaction, which waits at most `wait` for a
    /// concurrent one (`StoreError::Timeout` when that runs out).
    fn claim_in(
        store: &SqlStore<Self>,
        tx: &mut Transaction<'_, Self::Database>,
        claim: NewClaim<'_>,
        wait: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Coalescing: inserts the claims (distinct keys, in key order, so that concurrent
    /// batches lock rows in one order) whose keys have no row, in one statement; a key
    /// that has a row keeps it untouched (no write, no lock held after the statement).
    /// The digests it inserted, where the database can say (`RETURNING`); `None` where it
    /// cannot (MySQL), and the batch reads the rows back to see whose token they carry.
    fn insert_batch(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        claims: &[NewClaim<'_>],
    ) -> impl Future<Output = Result<Option<Vec<Vec<u8>>>, sqlx::Error>> + Send;

    /// Coalescing: the rows of `digests` (distinct keys), in one statement, with their
    /// tokens; a key with no row has no entry.
    fn read_batch(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        digests: &[&[u8]],
    ) -> impl Future<Output = Result<Vec<BatchRow>, sqlx::Error>> + Send;

    /// Coalescing: the fenced completion of every item (distinct keys), in one statement;
    /// how many rows it matched.
    fn complete_batch(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        items: &[Completion<'_>],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Runs [`Templates::schema`], serialized against other processes doing the same.
    fn migrate(store: &SqlStore<Self>) -> impl Future<Output = Result<(), Error>> + Send;

    /// The largest output it records.
    fn max_output_len(&self) -> usize {
        idem_core::codec::MAX_ENCODED_LEN
    }

    /// Whether a statement run outside a transaction failed as a deadlock victim, so that
    /// running it again is safe.
    fn is_deadlock(_error: &sqlx::Error) -> bool {
        false
    }
}

/// How a database's statements take their parameters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Placeholders {
    /// `$1`, `?1`: the key's digest first, then the token, then the values, each once.
    Numbered,
    /// `?` (MySQL), bound in the order they appear: the values a statement `SET`s first
    /// (one used twice bound twice), then the key's digest and the token of its `WHERE`.
    Positional,
}

/// The statements every database runs alike, as templates.
pub struct Templates {
    /// The claim's read of a key's record (digest).
    pub read: &'static str,
    /// The fenced renewal (digest, token; lease).
    pub renew: &'static str,
    /// The fenced completion (digest, token; outcome, output, TTL).
    pub complete: &'static str,
    /// Whether a token completed the record (digest, token).
    pub completed: &'static str,
    /// The fenced release (digest, token).
    pub release: &'static str,
    /// One batch of the purge (batch size).
    pub purge: &'static str,
    /// What `migrate` creates, in order.
    pub schema: &'static [&'static str],
}
