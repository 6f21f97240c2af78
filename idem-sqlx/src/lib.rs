//! SQL stores for [idem](https://docs.rs/idem): SQLite, PostgreSQL and MySQL/MariaDB
//! through sqlx, chosen by the features `sqlite`, `postgres` and `mysql`.
//!
//! One store, [`SqlStore`], written once for every database, with a dialect for what
//! differs; use it by its aliases `SqliteStore`, `PgStore` and `MySqlStore`. Each is built
//! from your pool, keeps its records in one table (`idem_records`, or
//! `with_table(name)`), creates it with `migrate()`, takes every time from the database's
//! clock, and passes idem's store conformance suite.

// On docs.rs, feature-gated items say which feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without a backend feature only `ClaimOrder` is left, and the shared pieces go unused.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]

mod batch;
mod cancel;
mod claim;
mod coalesce;
mod columns;
mod dialect;
mod duration;
mod error;
mod found;
mod order;
mod purge;
mod statements;
mod store;
mod table;
mod token;
mod warm;

pub use order::ClaimOrder;
pub use store::SqlStore;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::{PgDialect, PgStore};
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteDialect, SqliteStore};
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "mysql")]
pub use mysql::{MySqlDialect, MySqlStore};
