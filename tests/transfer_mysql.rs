//! Transactional mode on MySQL/MariaDB (InnoDB): the classic double charge. Money moves
//! between two account rows in the caller's transaction, with the claim and the receipt in
//! the same transaction: racing tasks, racing processes, retries, a kill -9 before commit
//! and a caller's rollback all leave the balances changed exactly once.
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::idempotent;
use idem::sqlx::MySqlStore;
use serde::{Deserialize, Serialize};
use sqlx::mysql::{MySql, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Transaction};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
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
    Db(sqlx::Error),
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

impl BankError {
    /// InnoDB rolled the whole transaction back as a deadlock victim (1213, SQLSTATE
    /// 40001), in the claim or in the body: the caller runs the transaction again.
    fn is_deadlock(&self) -> bool {
        let db = match self {
            BankError::Db(e) => Some(e),
            BankError::Idem(idem::Error::Store(idem::StoreError::Backend { source, .. })) => {
                source.downcast_ref::<sqlx::Error>()
            }
            BankError::Idem(_) => None,
        };
        matches!(db, Some(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40001"))
    }
}

struct Bank {
    store: MySqlStore,
    accounts: String,
    /// Transactions run again after a deadlock.
    deadlocks: AtomicUsize,
}

impl Bank {
    /// Moves money once per transfer id; the caller commits `tx`.
    #[idempotent(key = cmd.id, store = self.store, tx = tx, skip(by), name = "bank.transfer", on_conflict = wait, wait_timeout = "60s")]
    async fn transfer(
        &self,
        tx: &mut Transaction<'_, MySql>,
        cmd: Transfer,
        by: String,
    ) -> Result<Receipt, BankError> {
        self.move_money(tx, cmd, by).await
    }

    /// The same transfer, waiting at most a second for a concurrent one.
    #[idempotent(key = cmd.id, store = self.store, tx = tx, skip(by), name = "bank.transfer", on_conflict = wait, wait_timeout = "1s")]
    async fn transfer_impatiently(
        &self,
        tx: &mut Transaction<'_, MySql>,
        cmd: Transfer,
        by: String,
    ) -> Result<Receipt, BankError> {
        self.move_money(tx, cmd, by).await
    }

    async fn move_money(
        &self,
        tx: &mut Transaction<'_, MySql>,
        cmd: Transfer,
        by: String,
    ) -> Result<Receipt, BankError> {
        let debit = format!(
            "UPDATE {} SET balance = balance - ? WHERE id = ?",
            self.accounts
        );
        sqlx::query(AssertSqlSafe(debit))
            .bind(cmd.cents)
            .bind(cmd.from)
            .execute(&mut **tx)
            .await?;
        let read = format!("SELECT balance FROM {} WHERE id = ?", self.accounts);
        let from_balance: i64 = sqlx::query_scalar(AssertSqlSafe(read))
            .bind(cmd.from)
            .fetch_one(&mut **tx)
            .await?;
        let credit = format!(
            "UPDATE {} SET balance = balance + ? WHERE id = ?",
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

    /// One request as a handler runs it: begin, transfer, commit — and, as InnoDB asks of
    /// every transaction, run it again if it was chosen as a deadlock victim.
    async fn handle(
        &self,
        pool: &MySqlPool,
        cmd: Transfer,
        by: &str,
    ) -> Result<Receipt, BankError> {
        let mut attempts = 0;
        loop {
            match self.handle_once(pool, cmd.clone(), by).await {
                Err(e) if e.is_deadlock() && attempts < 10 => {
                    attempts += 1;
                    self.deadlocks.fetch_add(1, Ordering::SeqCst);
                }
                result => return result,
            }
        }
    }

    async fn handle_once(
        &self,
        pool: &MySqlPool,
        cmd: Transfer,
        by: &str,
    ) -> Result<Receipt, BankError> {
        let mut tx = pool.begin().await?;
        // A handler reads before it writes (here: is there money to move?). Under REPEATABLE
        // READ that read fixes the transaction's snapshot, so a claim that waited for
        // another transaction must read the record with a locking read to see its commit.
        let read = format!("SELECT balance FROM {} WHERE id = ?", self.accounts);
        let balance: i64 = sqlx::query_scalar(AssertSqlSafe(read))
            .bind(cmd.from)
            .fetch_one(&mut *tx)
            .await?;
        assert!(balance >= cmd.cents, "no money to move");
        let receipt = self.transfer(&mut tx, cmd, by.to_owned()).await?;
        tx.commit().await?;
        Ok(receipt)
    }

    async fn balances(&self, pool: &MySqlPool) -> (i64, i64) {
        let q = format!("SELECT balance FROM {} ORDER BY id", self.accounts);
        let rows: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(q))
            .fetch_all(pool)
            .await
            .unwrap();
        (rows[0], rows[1])
    }

    async fn records(&self, pool: &MySqlPool) -> i64 {
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

/// Opens the bank on `table` (store) and `<table>_acct` (two accounts of 10000 cents).
async fn open(url: &str, table: &str, create: bool) -> (Bank, MySqlPool) {
    let pool = MySqlPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await
        .unwrap();
    let store = MySqlStore::new(pool.clone()).with_table(table).unwrap();
    let accounts = format!("{table}_acct");
    if create {
        store.migrate().await.unwrap();
        let create = format!(
            "CREATE TABLE {accounts} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL) \
             ENGINE=InnoDB"
        );
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
    let bank = Bank {
        store,
        accounts,
        deadlocks: AtomicUsize::new(0),
    };
    (bank, pool)
}

async fn drop_bank(bank: &Bank, pool: &MySqlPool) {
    for t in [bank.store.table(), &bank.accounts] {
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
            .execute(pool)
            .await
            .unwrap();
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
        // Connected: start with the others, when the test says so.
        say("ready");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
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
        say(&format!(
            "deadlocks {}",
            bank.deadlocks.load(Ordering::SeqCst)
        ));
    });
}

/// A worker process, connected and waiting for [`go`](Worker::go).
struct Worker {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(url: &str, table: &str, vars: &[(&str, &str)]) -> Worker {
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
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in vars {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut worker = Worker { child, stdout };
        worker.wait_for("ready");
        worker
    }

    /// Starts its transfers.
    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
    }

    /// Reads its output up to the line `IDEM-TX <marker>`.
    fn wait_for(&mut self, marker: &str) {
        let mut line = String::new();
        while line.trim_end().split_once("IDEM-TX ").map(|(_, l)| l) != Some(marker) {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "the worker ended before saying {marker:?}"
            );
        }
    }

    /// Its receipts, and how many of its transactions ran again after a deadlock.
    fn receipts(mut self) -> (Vec<String>, usize) {
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success(), "a worker failed");
        let mut deadlocks = 0;
        let mut receipts = Vec::new();
        for line in rest.lines() {
            let Some((_, r)) = line.split_once("IDEM-TX ") else {
                continue;
            };
            match r.strip_prefix("deadlocks ") {
                Some(n) => deadlocks += n.parse::<usize>().unwrap(),
                None => receipts.push(r.to_owned()),
            }
        }
        (receipts, deadlocks)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_tasks_and_processes_move_the_money_once() {
    let Some(backend) = Backend::mysql() else {
        return;
    };
    let table = unique("idem_tx");
    let (bank, pool) = open(backend.url(), &table, true).await;
    let bank = Arc::new(bank);
    let mut workers: Vec<Worker> = (0..4)
        .map(|w| {
            Worker::spawn(
                backend.url(),
                &table,
                &[("IDEM_TX_WORKER", &format!("p{w}"))],
            )
        })
        .collect();
    // Every process is connected: all 96 callers start at once.
    workers.iter_mut().for_each(Worker::go);
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
    let mut deadlocks = bank.deadlocks.load(Ordering::SeqCst);
    for worker in workers {
        let (receipts, worker_deadlocks) = worker.receipts();
        assert_eq!(receipts.len(), 8, "every task of a worker got a receipt");
        seen.extend(receipts);
        deadlocks += worker_deadlocks;
    }
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
    // Nobody rolled back, so no waiter ever needed more than a shared lock on the key:
    // insert-first claims never deadlock here.
    assert_eq!(deadlocks, 0, "no transaction was a deadlock victim");
    drop_bank(&bank, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_by_the_caller_records_nothing() {
    let Some(backend) = Backend::mysql() else {
        return;
    };
    let table = unique("idem_tx");
    let (bank, pool) = open(backend.url(), &table, true).await;
    let mut tx = pool.begin().await.unwrap();
    bank.transfer(&mut tx, transfer_cmd("t-2"), "rolled back".into())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(bank.balances(&pool).await, (10000, 10000));
    assert_eq!(bank.records(&pool).await, 0, "no record, not even a claim");
    let r = bank
        .handle(&pool, transfer_cmd("t-2"), "retry")
        .await
        .unwrap();
    assert_eq!(r.by, "retry", "the retry ran: nothing was recorded");
    assert_eq!(bank.balances(&pool).await, (9750, 10250));
    // A different payload under the same key is refused before any effect.
    let mut tx = pool.begin().await.unwrap();
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
    drop_bank(&bank, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_before_commit_leaves_no_record_and_no_effect() {
    let Some(backend) = Backend::mysql() else {
        return;
    };
    let table = unique("idem_tx");
    let (bank, pool) = open(backend.url(), &table, true).await;
    let mut doomed = Worker::spawn(
        backend.url(),
        &table,
        &[("IDEM_TX_WORKER", "doomed"), ("IDEM_TX_STALL_MS", "600000")],
    );
    doomed.go();
    doomed.wait_for("written");
    doomed.child.kill().unwrap(); // SIGKILL between the effect write and the commit.
    doomed.child.wait().unwrap();
    assert_eq!(bank.records(&pool).await, 0, "no record was committed");
    // The server notices the dropped connection and rolls its transaction back; the retry
    // (which first waits on the dying transaction's row lock) runs once. The worker's
    // other tasks were waiting for the same lock; their server threads notice their
    // dropped connections only once the wait ends, and may first make the retry's
    // transaction a deadlock victim, which `handle` runs again.
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
    assert_eq!(bank.records(&pool).await, 1);
    drop_bank(&bank, &pool).await;
}

/// `wait_timeout` is InnoDB's lock wait timeout for the claim (`Error::WaitTimeout` after
/// about that long, before any effect), and the session's own timeout is back afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_timeout_is_the_lock_wait_timeout_of_the_claim() {
    let Some(backend) = Backend::mysql() else {
        return;
    };
    let table = unique("idem_tx");
    let (bank, pool) = open(backend.url(), &table, true).await;
    let mut first = pool.begin().await.unwrap();
    bank.transfer(&mut first, transfer_cmd("t-3"), "first".into())
        .await
        .unwrap();
    // `first` holds the uncommitted claim; a duplicate waits for it, at most 1 s.
    let mut second = pool.begin().await.unwrap();
    sqlx::query("SET SESSION innodb_lock_wait_timeout = 37")
        .execute(&mut *second)
        .await
        .unwrap();
    let started = Instant::now();
    let err = bank
        .transfer_impatiently(&mut second, transfer_cmd("t-3"), "second".into())
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(err, BankError::Idem(idem::Error::WaitTimeout)),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "waited {waited:?}"
    );
    let timeout: u64 = sqlx::query_scalar("SELECT @@SESSION.innodb_lock_wait_timeout")
        .fetch_one(&mut *second)
        .await
        .unwrap();
    assert_eq!(timeout, 37, "the session's lock wait timeout was restored");
    second.rollback().await.unwrap();
    first.commit().await.unwrap();
    assert_eq!(bank.balances(&pool).await, (9750, 10250));
    drop_bank(&bank, &pool).await;
}

/// InnoDB's answer when the owner of a key rolls back while several others wait to insert
/// it: each waiter holds a shared lock on the key by then and needs an exclusive one, so all
/// but one are deadlock victims. A victim's claim is a store error returned before its body
/// runs (InnoDB rolled its whole transaction back); running the transaction again replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_is_returned_before_the_body_and_the_transaction_runs_again() {
    let Some(backend) = Backend::mysql() else {
        return;
    };
    let table = unique("idem_tx");
    let (bank, pool) = open(backend.url(), &table, true).await;
    let bank = Arc::new(bank);
    let waiting = sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM information_schema.INNODB_TRX \
         WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE 'INSERT IGNORE INTO {table} %'"
    )));
    let rounds = 5;
    for round in 0..rounds {
        let id = format!("t-d{round}");
        let mut owner = pool.begin().await.unwrap();
        bank.transfer(&mut owner, transfer_cmd(&id), "owner".into())
            .await
            .unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|w| {
                let (bank, pool, id) = (bank.clone(), pool.clone(), id.clone());
                tokio::spawn(async move {
                    bank.handle_once(&pool, transfer_cmd(&id), &format!("w{w}"))
                        .await
                })
            })
            .collect();
        // All three wait for the owner's insert. (InnoDB refreshes INNODB_TRX only when it
        // was not read for 100 ms.)
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let blocked: i64 = sqlx::query_scalar(waiting.clone())
                .fetch_one(&pool)
                .await
                .unwrap();
            if blocked == 3 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the waiters never blocked"
            );
        }
        owner.rollback().await.unwrap();
        let (mut ran, mut victims) = (0, 0);
        let mut seen = BTreeSet::new();
        for (w, waiter) in waiters.into_iter().enumerate() {
            let r = match waiter.await.unwrap() {
                Ok(r) => {
                    ran += 1;
                    r
                }
                Err(e) => {
                    let in_claim = matches!(
                        e,
                        BankError::Idem(idem::Error::Store(idem::StoreError::Backend {
                            op: "claim",
                            ..
                        }))
                    );
                    assert!(e.is_deadlock() && in_claim, "{e:?}");
                    victims += 1;
                    bank.handle(&pool, transfer_cmd(&id), &format!("w{w} again"))
                        .await
                        .unwrap()
                }
            };
            seen.insert(format!("{} {}", r.by, r.from_balance));
        }
        assert_eq!(
            (ran, victims),
            (1, 2),
            "round {round}: one ran, the others were victims"
        );
        assert_eq!(seen.len(), 1, "every caller got the same receipt: {seen:?}");
    }
    assert_eq!(
        bank.balances(&pool).await,
        (10000 - 250 * rounds, 10000 + 250 * rounds),
        "each transfer moved the money once"
    );
    drop_bank(&bank, &pool).await;
}
