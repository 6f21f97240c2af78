//! The bank of the transactional-mode tests (`transfer_<backend>.rs`): the classic double
//! charge. Money moves between two account rows in the caller's transaction, with idem's
//! claim and receipt in the same transaction.
//!
//! Everything the backends share lives here: the types, the worker processes and the lines
//! they print, and the scenarios — racing tasks and processes, a caller's rollback, a kill -9
//! before commit. Each `transfer_<backend>.rs` implements [`Bank`] (its
//! `#[idempotent(..., tx = tx)]` transfer, its SQL, how its handlers begin and commit) and
//! keeps the tests only its backend needs.

use super::sql::unique;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    pub id: String,
    pub from: i64,
    pub to: i64,
    pub cents: i64,
}

/// Transfer `id`: 250 cents from account 1 to account 2.
pub fn transfer_cmd(id: &str) -> Transfer {
    Transfer {
        id: id.into(),
        from: 1,
        to: 2,
        cents: 250,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub transfer_id: String,
    pub by: String,
    pub from_balance: i64,
}

impl Receipt {
    /// `<by> <from_balance>`: what a worker prints, and what callers compare.
    pub fn line(&self) -> String {
        format!("{} {}", self.by, self.from_balance)
    }
}

#[derive(Debug)]
pub enum BankError {
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

/// A bank on one backend: a store on a table, and two accounts in `<table>_acct`.
pub trait Bank: Sized + Send + Sync + 'static {
    /// Connects to `url`, with the store on `table` and the accounts in `<table>_acct`.
    async fn connect(url: &str, table: &str) -> Self;

    /// Migrates the store and creates the (empty) accounts table.
    async fn create_tables(&self);

    /// The store's table and the accounts table.
    fn tables(&self) -> [&str; 2];

    /// Runs `sql` on the pool, outside any transaction: the `i64`s of its rows' first column
    /// (none for a statement).
    async fn query(&self, sql: String) -> Vec<i64>;

    /// One request as this backend's handlers run it: begin, transfer, commit. (Tasks run
    /// it, so its future is `Send`.)
    fn handle(
        &self,
        cmd: Transfer,
        by: &str,
    ) -> impl Future<Output = Result<Receipt, BankError>> + Send;

    /// The transfer in a transaction the caller rolls back afterwards.
    async fn rolled_back(&self, cmd: Transfer, by: &str) -> Result<Receipt, BankError>;

    /// How many transactions [`handle`](Bank::handle) ran again as deadlock victims.
    fn deadlocks(&self) -> usize {
        0
    }

    /// Ends a test: drops its tables.
    async fn close(&self) {
        for table in self.tables() {
            self.query(format!("DROP TABLE IF EXISTS {table}")).await;
        }
    }

    /// Connects and creates the tables, with 10000 cents in each account.
    async fn open(url: &str, table: &str) -> Self {
        let bank = Self::connect(url, table).await;
        bank.create_tables().await;
        let [_, accounts] = bank.tables();
        bank.query(format!(
            "INSERT INTO {accounts} VALUES (1, 10000), (2, 10000)"
        ))
        .await;
        bank
    }

    /// The balances of accounts 1 and 2 (committed ones: other connections' view).
    async fn balances(&self) -> (i64, i64) {
        let [_, accounts] = self.tables();
        let rows = self
            .query(format!("SELECT balance FROM {accounts} ORDER BY id"))
            .await;
        (rows[0], rows[1])
    }

    /// How many records the store holds (committed ones: other connections' view).
    async fn records(&self) -> i64 {
        let [store, _] = self.tables();
        self.query(format!("SELECT COUNT(*) FROM {store}")).await[0]
    }
}

/// The accounts table of the store on `table`.
pub fn accounts_table(table: &str) -> String {
    format!("{table}_acct")
}

/// Prints `IDEM-TX <line>` for the test that started this worker.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "IDEM-TX {line}").unwrap();
    out.flush().unwrap();
}

/// For the kill test, in a transfer body once its effects are written (not committed):
/// with `IDEM_TX_STALL_MS` set, says `written` and sleeps that long.
pub async fn stall_if_asked() {
    if let Ok(ms) = std::env::var("IDEM_TX_STALL_MS") {
        say("written");
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
}

/// The body of each transfer test binary's ignored `tx_worker` test: a worker process with
/// 8 tasks sending transfer `t-1` once the test says `go`. It prints `ready`, a receipt line
/// per task and `deadlocks <n>`.
pub fn worker<B: Bank>() {
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
        let bank = Arc::new(B::connect(&url, &table).await);
        // Connected: start with the others, when the test says so.
        say("ready");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let (bank, who) = (bank.clone(), format!("{worker}/{task}"));
                tokio::spawn(async move { bank.handle(transfer_cmd("t-1"), &who).await.unwrap() })
            })
            .collect();
        for task in tasks {
            say(&task.await.unwrap().line());
        }
        say(&format!("deadlocks {}", bank.deadlocks()));
    });
}

/// A worker process, connected and waiting for [`go`](Worker::go).
pub struct Worker {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Starts this test binary's `tx_worker` on `url` and `table`, with `vars` set.
    pub fn spawn(url: &str, table: &str, vars: &[(&str, &str)]) -> Worker {
        let mut command = super::worker_command("tx_worker");
        command
            .env("IDEM_TX_URL", url)
            .env("IDEM_TX_TABLE", table)
            .stdin(Stdio::piped());
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
    pub fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
    }

    /// Reads its output up to the line `IDEM-TX <marker>`.
    pub fn wait_for(&mut self, marker: &str) {
        let mut line = String::new();
        while line.trim_end().split_once("IDEM-TX ").map(|(_, l)| l) != Some(marker) {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "the worker ended before saying {marker:?}"
            );
        }
    }

    /// SIGKILL, and waits for it to die.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Its receipts, and how many of its transactions ran again after a deadlock.
    pub fn receipts(mut self) -> (Vec<String>, usize) {
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

/// Racing tasks and processes move the money once: 64 tasks here and 8 in each of 4 worker
/// processes send transfer `t-1` at once, then 3 retries after everything committed. Every
/// caller gets the same receipt, the balances change once, the store holds one record.
pub async fn race<B: Bank>(url: &str) {
    let table = unique("idem_tx");
    let bank = Arc::new(B::open(url, &table).await);
    let mut workers: Vec<Worker> = (0..4)
        .map(|w| Worker::spawn(url, &table, &[("IDEM_TX_WORKER", &format!("p{w}"))]))
        .collect();
    // Every process is connected: all 96 callers start at once.
    workers.iter_mut().for_each(Worker::go);
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let bank = bank.clone();
            tokio::spawn(async move {
                bank.handle(transfer_cmd("t-1"), &format!("main/{task}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for task in tasks {
        seen.insert(task.await.unwrap().line());
    }
    let mut deadlocks = bank.deadlocks();
    for worker in workers {
        let (receipts, worker_deadlocks) = worker.receipts();
        assert_eq!(receipts.len(), 8, "every task of a worker got a receipt");
        seen.extend(receipts);
        deadlocks += worker_deadlocks;
    }
    // Retries after everything committed replay too.
    for _ in 0..3 {
        seen.insert(
            bank.handle(transfer_cmd("t-1"), "retry")
                .await
                .unwrap()
                .line(),
        );
    }
    assert_eq!(seen.len(), 1, "every caller got the same receipt: {seen:?}");
    assert_eq!(
        bank.balances().await,
        (9750, 10250),
        "the money moved exactly once"
    );
    assert_eq!(bank.records().await, 1);
    // InnoDB: nobody rolled back, so no waiter ever needed more than a shared lock on the
    // key: insert-first claims never deadlock here. (Other backends have no deadlocks.)
    assert_eq!(deadlocks, 0, "no transaction was a deadlock victim");
    bank.close().await;
}

/// A rollback by the caller records nothing, not even the claim: the retry runs. A different
/// payload under the same key is refused before any effect.
pub async fn caller_rollback<B: Bank>(url: &str) {
    let bank = B::open(url, &unique("idem_tx")).await;
    bank.rolled_back(transfer_cmd("t-2"), "rolled back")
        .await
        .unwrap();
    assert_eq!(bank.balances().await, (10000, 10000));
    assert_eq!(bank.records().await, 0, "no record, not even the claim");
    let r = bank.handle(transfer_cmd("t-2"), "retry").await.unwrap();
    assert_eq!(r.by, "retry", "the retry ran: nothing was recorded");
    assert_eq!(bank.balances().await, (9750, 10250));
    // A different payload under the same key is refused before any effect.
    let mut other = transfer_cmd("t-2");
    other.cents = 9999;
    let err = bank.rolled_back(other, "tamper").await.unwrap_err();
    assert!(
        matches!(err, BankError::Idem(idem::Error::PayloadMismatch)),
        "{err:?}"
    );
    assert_eq!(bank.balances().await, (9750, 10250));
    bank.close().await;
}

/// A worker process killed (SIGKILL) between its effect writes and its commit leaves no
/// record and no effect; the retry then runs once, and a second one replays it.
pub async fn kill_before_commit<B: Bank>(url: &str) {
    let table = unique("idem_tx");
    let bank = B::open(url, &table).await;
    let mut doomed = Worker::spawn(
        url,
        &table,
        &[("IDEM_TX_WORKER", "doomed"), ("IDEM_TX_STALL_MS", "600000")],
    );
    doomed.go();
    doomed.wait_for("written");
    // Its claim and effects are written and uncommitted: other connections see none of them.
    assert_eq!(bank.balances().await, (10000, 10000));
    assert_eq!(bank.records().await, 0);
    doomed.kill(); // Between the effect write and the commit.
    assert_eq!(bank.balances().await, (10000, 10000), "no effect");
    assert_eq!(bank.records().await, 0, "no record was committed");
    let r = bank.handle(transfer_cmd("t-1"), "retry").await.unwrap();
    assert_eq!(r.by, "retry");
    assert_eq!(
        bank.balances().await,
        (9750, 10250),
        "only the retry's effect"
    );
    let again = bank.handle(transfer_cmd("t-1"), "again").await.unwrap();
    assert_eq!(again, r);
    assert_eq!(bank.balances().await, (9750, 10250));
    assert_eq!(bank.records().await, 1);
    bank.close().await;
}
