//! Transactional mode on SQLite: the classic double charge. Money moves between two account
//! rows in the caller's `BEGIN IMMEDIATE` transaction, with the claim and the receipt in the
//! same transaction: racing tasks, racing processes, retries, a kill -9 before commit and a
//! caller's rollback all leave the balances changed exactly once. A fresh database file
//! (WAL) per test, so these always run. The shared scenarios are in `support/bank.rs`.
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::idempotent;
use idem::sqlx::SqliteStore;
use sqlx::sqlite::{Sqlite, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Transaction};
use std::path::PathBuf;
use std::time::Duration;
use support::bank::{self, Bank, BankError, Receipt, Transfer, accounts_table, transfer_cmd};
use support::sql::{Backend, remove_sqlite_files, sqlite_options, unique};

struct SqliteBank {
    store: SqliteStore,
    accounts: String,
    pool: SqlitePool,
}

impl SqliteBank {
    /// Moves money once per transfer id; the caller commits `tx`.
    #[idempotent(key = cmd.id, store = self.store, tx = tx, skip(by), on_conflict = wait, wait_timeout = "60s")]
    async fn transfer(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        cmd: Transfer,
        by: String,
    ) -> Result<Receipt, BankError> {
        let debit = format!(
            "UPDATE {} SET balance = balance - ?1 WHERE id = ?2 RETURNING balance",
            self.accounts
        );
        let from_balance: i64 = sqlx::query_scalar(AssertSqlSafe(debit))
            .bind(cmd.cents)
            .bind(cmd.from)
            .fetch_one(&mut **tx)
            .await?;
        let credit = format!(
            "UPDATE {} SET balance = balance + ?1 WHERE id = ?2",
            self.accounts
        );
        sqlx::query(AssertSqlSafe(credit))
            .bind(cmd.cents)
            .bind(cmd.to)
            .execute(&mut **tx)
            .await?;
        bank::stall_if_asked().await;
        Ok(Receipt {
            transfer_id: cmd.id,
            by,
            from_balance,
        })
    }
}

impl Bank for SqliteBank {
    async fn connect(url: &str, table: &str) -> Self {
        let pool = SqlitePoolOptions::new()
            .max_connections(16)
            .connect_with(sqlite_options(url))
            .await
            .unwrap();
        let store = SqliteStore::new(pool.clone()).with_table(table).unwrap();
        let accounts = accounts_table(table);
        SqliteBank {
            store,
            accounts,
            pool,
        }
    }

    async fn create_tables(&self) {
        self.store.migrate().await.unwrap();
        self.query(format!(
            "CREATE TABLE {} (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)",
            self.accounts
        ))
        .await;
    }

    fn tables(&self) -> [&str; 2] {
        [self.store.table(), &self.accounts]
    }

    async fn query(&self, sql: String) -> Vec<i64> {
        let query = sqlx::query_scalar(AssertSqlSafe(sql));
        query.fetch_all(&self.pool).await.unwrap()
    }

    /// Begin (taking SQLite's write lock at once, so a duplicate waits here for the pool's
    /// busy timeout), transfer, commit.
    async fn handle(&self, cmd: Transfer, by: &str) -> Result<Receipt, BankError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let receipt = self.transfer(&mut tx, cmd, by.to_owned()).await?;
        tx.commit().await?;
        Ok(receipt)
    }

    async fn rolled_back(&self, cmd: Transfer, by: &str) -> Result<Receipt, BankError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let result = self.transfer(&mut tx, cmd, by.to_owned()).await;
        tx.rollback().await?;
        result
    }

    /// The file goes with the test ([`DbFile`]): just close the pool.
    async fn close(&self) {
        self.pool.close().await;
    }
}

/// The test's database file, removed with its `-wal` and `-shm` files when dropped (also
/// when the test panics).
struct DbFile {
    url: String,
    path: PathBuf,
}

impl DbFile {
    fn new() -> Self {
        let url = Backend::sqlite().url().to_owned();
        let path = sqlite_options(&url).get_filename().to_owned();
        DbFile { url, path }
    }
}

impl Drop for DbFile {
    fn drop(&mut self) {
        remove_sqlite_files(&self.path);
    }
}

#[test]
#[ignore = "a worker process: the transfer tests start it with IDEM_TX_* set"]
fn tx_worker() {
    bank::worker::<SqliteBank>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_tasks_and_processes_move_the_money_once() {
    let db = DbFile::new();
    bank::race::<SqliteBank>(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_by_the_caller_records_nothing() {
    let db = DbFile::new();
    bank::caller_rollback::<SqliteBank>(&db.url).await;
}

/// Readers (WAL) see none of the doomed worker's uncommitted claim and effects. Once it is
/// killed, the kernel drops its locks; the WAL frames it wrote have no commit frame, so
/// nobody ever sees them; the retry (which takes the write lock the dead process held) runs
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_before_commit_leaves_no_record_and_no_effect() {
    let db = DbFile::new();
    bank::kill_before_commit::<SqliteBank>(&db.url).await;
}

/// SQLite only: a deferred transaction (`pool.begin()`) whose first statement is the claim
/// becomes a writer there, so it waits for the write lock like `BEGIN IMMEDIATE` (up to the
/// pool's busy timeout, then `WaitTimeout`). One that read before its claim can lose the
/// race for the lock: it fails before any effect, with a store error naming
/// `BEGIN IMMEDIATE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_transaction_that_loses_the_write_lock_fails_before_any_effect() {
    let db = DbFile::new();
    let bank = SqliteBank::open(&db.url, &unique("idem_tx")).await;
    let pool = &bank.pool;

    // Another transaction holds the write lock for 300 ms: the claim waits for it.
    let holder = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        holder.rollback().await.unwrap();
    });
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await.unwrap();
    let r = bank
        .transfer(&mut tx, transfer_cmd("t-3"), "deferred".into())
        .await
        .unwrap();
    assert_eq!(r.by, "deferred");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the claim should have waited for the lock"
    );
    tx.rollback().await.unwrap();
    release.await.unwrap();

    // Another transaction committed after this one's first read: it can never write.
    let mut tx = pool.begin().await.unwrap();
    let q = format!("SELECT balance FROM {} WHERE id = 1", bank.accounts);
    let before: i64 = sqlx::query_scalar(AssertSqlSafe(q))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(before, 10000);
    bank.handle(transfer_cmd("t-4"), "committed").await.unwrap();
    let err = bank
        .transfer(&mut tx, transfer_cmd("t-3"), "deferred".into())
        .await
        .unwrap_err();
    let BankError::Idem(idem::Error::Store(store)) = &err else {
        panic!("{err:?}");
    };
    assert!(store.to_string().contains("BEGIN IMMEDIATE"), "{store}");
    tx.rollback().await.unwrap();

    assert_eq!(
        bank.balances().await,
        (9750, 10250),
        "only the committed transfer moved money"
    );
    assert_eq!(bank.records().await, 1);
    // The same call in a `BEGIN IMMEDIATE` transaction runs.
    let r = bank.handle(transfer_cmd("t-3"), "immediate").await.unwrap();
    assert_eq!(r.by, "immediate");
    assert_eq!(bank.balances().await, (9500, 10500));
    bank.close().await;
}
