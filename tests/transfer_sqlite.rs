//! Transactional mode on SQLite: the classic double charge. Money moves between two account
//! rows in the caller's `BEGIN IMMEDIATE` transaction, with the claim and the receipt in the
//! same transaction: racing tasks, racing processes, retries, a kill -9 before commit and a
//! caller's rollback all leave the balances changed exactly once. A fresh database file
//! (WAL) per test, so these always run.
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::idempotent;
use idem::sqlx::SqliteStore;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Transaction};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::sql::{Backend, unique};

#[derive(Debug, Clone, Serialize)]
struct Transfer {
    id: String,
    from: i64,
    to: i64,
    cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    transfer_id: String,
    by: String,
    from_balance: i64,
}

#[derive(Debug)]
enum BankError {
    Idem(idem::Error),
    Db(#[allow(dead_code, reason = "shown by Debug when a test fails")] sqlx::Error),
}

impl From<idem::Error> for BankError {
    fn from(e: idem::Error) -> Self {
        BankError::Idem(e)
    }
}

impl From<sqlx::Error> for BankError {
    fn from(e: sqlx::Error) -> Self {
        BankError::Db(e)
    }
}

struct Bank {
    store: SqliteStore,
    accounts: String,
}

impl Bank {
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
        if let Ok(ms) = std::env::var("IDEM_TX_STALL_MS") {
            // The kill test: effects written, not committed.
            say("written");
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        Ok(Receipt {
            transfer_id: cmd.id,
            by,
            from_balance,
        })
    }

    /// One request as a handler runs it: begin (taking SQLite's write lock at once, so a
    /// duplicate waits here for the pool's busy timeout), transfer, commit.
    async fn handle(
        &self,
        pool: &SqlitePool,
        cmd: Transfer,
        by: &str,
    ) -> Result<Receipt, BankError> {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let receipt = self.transfer(&mut tx, cmd, by.to_owned()).await?;
        tx.commit().await?;
        Ok(receipt)
    }

    async fn balances(&self, pool: &SqlitePool) -> (i64, i64) {
        let q = format!("SELECT balance FROM {} ORDER BY id", self.accounts);
        let rows: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(q))
            .fetch_all(pool)
            .await
            .unwrap();
        (rows[0], rows[1])
    }

    /// How many records the store holds (committed ones: other connections' view).
    async fn records(&self, pool: &SqlitePool) -> i64 {
        let q = format!("SELECT COUNT(*) FROM {}", self.store.table());
        sqlx::query_scalar(AssertSqlSafe(q))
            .fetch_one(pool)
            .await
            .unwrap()
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "IDEM-TX {line}").unwrap();
    out.flush().unwrap();
}

fn options(url: &str) -> SqliteConnectOptions {
    let options: SqliteConnectOptions = url.parse().unwrap();
    options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // Duplicates queue at BEGIN IMMEDIATE for up to this long.
        .busy_timeout(Duration::from_secs(60))
}

/// Opens the bank on `table` (store) and `<table>_acct` (two accounts of 10000 cents).
async fn open(url: &str, table: &str, create: bool) -> (Bank, SqlitePool) {
    let pool = SqlitePoolOptions::new()
        .max_connections(16)
        .connect_with(options(url))
        .await
        .unwrap();
    let store = SqliteStore::new(pool.clone()).with_table(table).unwrap();
    let accounts = format!("{table}_acct");
    if create {
        store.migrate().await.unwrap();
        let create =
            format!("CREATE TABLE {accounts} (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)");
        sqlx::query(AssertSqlSafe(create))
            .execute(&pool)
            .await
            .unwrap();
        let seed = format!("INSERT INTO {accounts} VALUES (1, 10000), (2, 10000)");
        sqlx::query(AssertSqlSafe(seed))
            .execute(&pool)
            .await
            .unwrap();
    }
    (Bank { store, accounts }, pool)
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
        let path = options(&url).get_filename().to_owned();
        DbFile { url, path }
    }
}

impl Drop for DbFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = self.path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

fn transfer_cmd(id: &str) -> Transfer {
    Transfer {
        id: id.into(),
        from: 1,
        to: 2,
        cents: 250,
    }
}

#[test]
#[ignore = "a worker process: the transfer tests start it with IDEM_TX_* set"]
fn tx_worker() {
    let Ok(table) = std::env::var("IDEM_TX_TABLE") else {
        return;
    };
    let url = std::env::var("IDEM_TX_URL").unwrap();
    let worker = std::env::var("IDEM_TX_WORKER").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (bank, pool) = open(&url, &table, false).await;
        let bank = Arc::new(bank);
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let (bank, pool, who) = (bank.clone(), pool.clone(), format!("{worker}/{task}"));
                tokio::spawn(
                    async move { bank.handle(&pool, transfer_cmd("t-1"), &who).await.unwrap() },
                )
            })
            .collect();
        for task in tasks {
            let receipt = task.await.unwrap();
            say(&format!("{} {}", receipt.by, receipt.from_balance));
        }
    });
}

fn spawn(url: &str, table: &str, vars: &[(&str, &str)]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "tx_worker",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IDEM_TX_URL", url)
        .env("IDEM_TX_TABLE", table)
        .stdout(Stdio::piped());
    for (k, v) in vars {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

fn receipts(child: Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "a worker failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("IDEM-TX ").map(|(_, r)| r.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_tasks_and_processes_move_the_money_once() {
    let db = DbFile::new();
    let table = unique("idem_tx");
    let (bank, pool) = open(&db.url, &table, true).await;
    let bank = Arc::new(bank);
    let workers: Vec<Child> = (0..4)
        .map(|w| spawn(&db.url, &table, &[("IDEM_TX_WORKER", &format!("p{w}"))]))
        .collect();
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let (bank, pool) = (bank.clone(), pool.clone());
            tokio::spawn(async move {
                bank.handle(&pool, transfer_cmd("t-1"), &format!("main/{task}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for task in tasks {
        let r = task.await.unwrap();
        seen.insert(format!("{} {}", r.by, r.from_balance));
    }
    let mut worker_receipts = 0;
    for worker in workers {
        let got = receipts(worker);
        worker_receipts += got.len();
        seen.extend(got);
    }
    assert_eq!(worker_receipts, 4 * 8, "every worker task got a receipt");
    // Retries after everything committed replay too.
    for _ in 0..3 {
        let r = bank
            .handle(&pool, transfer_cmd("t-1"), "retry")
            .await
            .unwrap();
        seen.insert(format!("{} {}", r.by, r.from_balance));
    }
    assert_eq!(seen.len(), 1, "every caller got the same receipt: {seen:?}");
    assert_eq!(
        bank.balances(&pool).await,
        (9750, 10250),
        "the money moved exactly once"
    );
    assert_eq!(bank.records(&pool).await, 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_by_the_caller_records_nothing() {
    let db = DbFile::new();
    let table = unique("idem_tx");
    let (bank, pool) = open(&db.url, &table, true).await;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    bank.transfer(&mut tx, transfer_cmd("t-2"), "rolled back".into())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(bank.balances(&pool).await, (10000, 10000));
    assert_eq!(bank.records(&pool).await, 0, "the claim rolled back too");
    let r = bank
        .handle(&pool, transfer_cmd("t-2"), "retry")
        .await
        .unwrap();
    assert_eq!(r.by, "retry", "the retry ran: nothing was recorded");
    assert_eq!(bank.balances(&pool).await, (9750, 10250));
    // A different payload under the same key is refused before any effect.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let mut other = transfer_cmd("t-2");
    other.cents = 9999;
    let err = bank
        .transfer(&mut tx, other, "tamper".into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BankError::Idem(idem::Error::PayloadMismatch)),
        "{err:?}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(bank.balances(&pool).await, (9750, 10250));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_before_commit_leaves_no_record_and_no_effect() {
    let db = DbFile::new();
    let table = unique("idem_tx");
    let (bank, pool) = open(&db.url, &table, true).await;
    let mut child = spawn(
        &db.url,
        &table,
        &[("IDEM_TX_WORKER", "doomed"), ("IDEM_TX_STALL_MS", "600000")],
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("IDEM-TX written") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the worker ended before writing"
        );
    }
    // Its claim and effects are written and uncommitted: readers (WAL) see none of them.
    assert_eq!(bank.balances(&pool).await, (10000, 10000));
    assert_eq!(bank.records(&pool).await, 0);
    child.kill().unwrap(); // SIGKILL between the effect write and the commit.
    child.wait().unwrap();
    // The kernel dropped the dead process's locks; the WAL frames it wrote have no commit
    // frame, so nobody ever sees them: no record, no effect.
    assert_eq!(bank.balances(&pool).await, (10000, 10000), "no effect");
    assert_eq!(bank.records(&pool).await, 0, "no record");
    // The retry (which takes the write lock the dead process held) runs once.
    let r = bank
        .handle(&pool, transfer_cmd("t-1"), "retry")
        .await
        .unwrap();
    assert_eq!(r.by, "retry");
    assert_eq!(
        bank.balances(&pool).await,
        (9750, 10250),
        "only the retry's effect"
    );
    let again = bank
        .handle(&pool, transfer_cmd("t-1"), "again")
        .await
        .unwrap();
    assert_eq!(again, r);
    assert_eq!(bank.balances(&pool).await, (9750, 10250));
    pool.close().await;
}

/// SQLite only: a deferred transaction (`pool.begin()`) is not serialized by SQLite, so its
/// claim can lose the race for the write lock. It fails before any effect: a wait timeout
/// while another transaction holds the lock, a store error naming `BEGIN IMMEDIATE` when
/// another one committed since its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_transaction_that_loses_the_write_lock_fails_before_any_effect() {
    let db = DbFile::new();
    let table = unique("idem_tx");
    let (bank, pool) = open(&db.url, &table, true).await;

    // Another transaction holds the write lock: SQLite does not wait for it here (this
    // transaction already read), so the claim fails at once.
    let holder = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let err = bank
        .transfer(&mut tx, transfer_cmd("t-3"), "deferred".into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BankError::Idem(idem::Error::WaitTimeout)),
        "{err:?}"
    );
    tx.rollback().await.unwrap();
    holder.rollback().await.unwrap();

    // Another transaction committed after this one's first read: it can never write.
    let mut tx = pool.begin().await.unwrap();
    let q = format!("SELECT balance FROM {} WHERE id = 1", bank.accounts);
    let before: i64 = sqlx::query_scalar(AssertSqlSafe(q))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(before, 10000);
    bank.handle(&pool, transfer_cmd("t-4"), "committed")
        .await
        .unwrap();
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
        bank.balances(&pool).await,
        (9750, 10250),
        "only the committed transfer moved money"
    );
    assert_eq!(bank.records(&pool).await, 1);
    // The same call in a `BEGIN IMMEDIATE` transaction runs.
    let r = bank
        .handle(&pool, transfer_cmd("t-3"), "immediate")
        .await
        .unwrap();
    assert_eq!(r.by, "immediate");
    assert_eq!(bank.balances(&pool).await, (9500, 10500));
    pool.close().await;
}
