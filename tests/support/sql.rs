//! The SQL backends as tests see them: where each one is, a store in a fresh table, and an
//! "effects" table bodies write to, so tests can count what really happened.
//!
//! PostgreSQL and MySQL/MariaDB come from `IDEM_TEST_POSTGRES_URL` / `IDEM_TEST_MYSQL_URL`;
//! without one, that backend is skipped with a note on the terminal (a failure instead when
//! `IDEM_REQUIRE_SERVERS=1`, as in CI). SQLite is a file in the temp dir and always runs.

use idem::Store;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Which database, and how to reach it. It travels to worker processes as two env vars.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite(String),
    Postgres(String),
    MySql(String),
}

impl Backend {
    /// A fresh SQLite file (WAL) — always available.
    pub fn sqlite() -> Backend {
        let path = std::env::temp_dir().join(format!("{}.sqlite", unique("idem_test")));
        Backend::Sqlite(format!("sqlite://{}?mode=rwc", path.display()))
    }

    /// PostgreSQL from the environment, or `None` (skipped).
    pub fn postgres() -> Option<Backend> {
        server_url("IDEM_TEST_POSTGRES_URL", "PostgreSQL").map(Backend::Postgres)
    }

    /// MySQL/MariaDB from the environment, or `None` (skipped).
    pub fn mysql() -> Option<Backend> {
        server_url("IDEM_TEST_MYSQL_URL", "MySQL/MariaDB").map(Backend::MySql)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
            Backend::MySql(_) => "mysql",
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Backend::Sqlite(u) | Backend::Postgres(u) | Backend::MySql(u) => u,
        }
    }

    pub fn from_parts(name: &str, url: String) -> Backend {
        match name {
            "sqlite" => Backend::Sqlite(url),
            "postgres" => Backend::Postgres(url),
            "mysql" => Backend::MySql(url),
            other => panic!("unknown backend {other}"),
        }
    }

    /// Connects, and opens the store on `table` (migrated) with the effects table beside it.
    pub async fn connect(&self, table: &str) -> Db {
        self.open(table, false).await
    }

    /// [`connect`](Backend::connect), with the store's claims and completes coalesced if
    /// `coalesce`.
    pub async fn open(&self, table: &str, coalesce: bool) -> Db {
        let effects_table = format!("{table}_fx");
        match self {
            Backend::Sqlite(url) => {
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(sqlite_options(url))
                    .await
                    .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
                let store = idem::sqlx::SqliteStore::new(pool.clone())
                    .with_table(table)
                    .unwrap()
                    .with_coalescing(coalesce);
                store.migrate().await.unwrap();
                Db::new(Arc::new(store), Effects::Sqlite(pool), effects_table).await
            }
            Backend::Postgres(url) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(10)
                    .connect(url)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}"));
                let store = idem::sqlx::PgStore::new(pool.clone())
                    .with_table(table)
                    .unwrap()
                    .with_coalescing(coalesce);
                store.migrate().await.unwrap();
                Db::new(Arc::new(store), Effects::Postgres(pool), effects_table).await
            }
            Backend::MySql(url) => {
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(10)
                    .connect(url)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach MySQL/MariaDB at {url}: {e}"));
                let store = idem::sqlx::MySqlStore::new(pool.clone())
                    .with_table(table)
                    .unwrap()
                    .with_coalescing(coalesce);
                store.migrate().await.unwrap();
                Db::new(Arc::new(store), Effects::MySql(pool), effects_table).await
            }
        }
    }
}

/// A store and the effects table, on one database.
pub struct Db {
    pub store: Arc<dyn Store>,
    pub effects: Effects,
    pub effects_table: String,
}

/// The pool the effects are written through.
pub enum Effects {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    // Test tables are named by `unique`: plain identifiers.
    sqlx::AssertSqlSafe(text)
}

impl Db {
    async fn new(store: Arc<dyn Store>, effects: Effects, effects_table: String) -> Db {
        let t = &effects_table;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {t} (k VARCHAR(64) NOT NULL, who VARCHAR(64) NOT NULL)"
        );
        match &effects {
            Effects::Sqlite(p) => drop(sqlx::query(sql(create)).execute(p).await.unwrap()),
            Effects::Postgres(p) => drop(sqlx::query(sql(create)).execute(p).await.unwrap()),
            Effects::MySql(p) => drop(sqlx::query(sql(create)).execute(p).await.unwrap()),
        }
        Db {
            store,
            effects,
            effects_table,
        }
    }

    /// Writes one effect row: the side effect a body must not repeat.
    pub async fn effect(&self, key: &str, who: &str) {
        let t = &self.effects_table;
        match &self.effects {
            Effects::Sqlite(p) => {
                let q = format!("INSERT INTO {t} (k, who) VALUES (?, ?)");
                sqlx::query(sql(q))
                    .bind(key)
                    .bind(who)
                    .execute(p)
                    .await
                    .unwrap();
            }
            Effects::Postgres(p) => {
                let q = format!("INSERT INTO {t} (k, who) VALUES ($1, $2)");
                sqlx::query(sql(q))
                    .bind(key)
                    .bind(who)
                    .execute(p)
                    .await
                    .unwrap();
            }
            Effects::MySql(p) => {
                let q = format!("INSERT INTO {t} (k, who) VALUES (?, ?)");
                sqlx::query(sql(q))
                    .bind(key)
                    .bind(who)
                    .execute(p)
                    .await
                    .unwrap();
            }
        }
    }

    /// (key, rows) for every key with effects.
    pub async fn effect_counts(&self) -> Vec<(String, i64)> {
        let q = format!(
            "SELECT k, COUNT(*) FROM {} GROUP BY k ORDER BY k",
            self.effects_table
        );
        match &self.effects {
            Effects::Sqlite(p) => sqlx::query_as(sql(q)).fetch_all(p).await.unwrap(),
            Effects::Postgres(p) => sqlx::query_as(sql(q)).fetch_all(p).await.unwrap(),
            Effects::MySql(p) => sqlx::query_as(sql(q)).fetch_all(p).await.unwrap(),
        }
    }

    /// The stored token of the record in `table` (tests have one record there).
    pub async fn only_token(&self, table: &str) -> i64 {
        let q = format!("SELECT token FROM {table}");
        match &self.effects {
            Effects::Sqlite(p) => sqlx::query_scalar(sql(q)).fetch_one(p).await.unwrap(),
            Effects::Postgres(p) => sqlx::query_scalar(sql(q)).fetch_one(p).await.unwrap(),
            Effects::MySql(p) => sqlx::query_scalar(sql(q)).fetch_one(p).await.unwrap(),
        }
    }

    /// Drops the store's and the effects' tables (an SQLite test's whole file).
    pub async fn drop_tables(&self, table: &str) {
        if let Effects::Sqlite(pool) = &self.effects {
            remove_sqlite_files(pool.connect_options().get_filename());
            return;
        }
        for t in [table, &self.effects_table] {
            let q = format!("DROP TABLE IF EXISTS {t}");
            match &self.effects {
                Effects::Sqlite(p) => drop(sqlx::query(sql(q)).execute(p).await.unwrap()),
                Effects::Postgres(p) => drop(sqlx::query(sql(q)).execute(p).await.unwrap()),
                Effects::MySql(p) => drop(sqlx::query(sql(q)).execute(p).await.unwrap()),
            }
        }
    }
}

/// The options the tests open an SQLite file at `url` with: WAL, `synchronous = NORMAL`, and
/// a busy timeout of 60 s (writers queue for the write lock, duplicates at `BEGIN
/// IMMEDIATE`).
pub fn sqlite_options(url: &str) -> SqliteConnectOptions {
    let options: SqliteConnectOptions = url.parse().unwrap();
    options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(60))
}

/// Removes the SQLite database file at `path` and the `-wal`, `-shm` and `-journal` files
/// beside it.
pub fn remove_sqlite_files(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.to_owned().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// A name no other test, process or run uses (a plain identifier).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{:x}_{}",
        std::process::id(),
        nanos & 0xffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The URL in `var`, or `None` after telling the terminal (once per suite) it is skipped.
pub fn server_url(var: &str, suite: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("IDEM_REQUIRE_SERVERS").as_deref() == Ok("1") {
                panic!("IDEM_REQUIRE_SERVERS=1 but {var} is not set: the {suite} tests cannot run");
            }
            // Straight to the terminal: libtest captures print!/eprint! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "note: SKIPPED {suite} tests: set {var} to run them"
            );
            None
        }
    }
}
