//! Transactional mode on PostgreSQL: the classic double charge. Money moves between two
//! account rows in the caller's transaction, with the claim and the receipt in the same
//! transaction: racing tasks, racing processes, retries, a kill -9 before commit and a
//! caller's rollback all leave the balances changed exactly once.
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::idempotent;
use idem::sqlx::PgStore;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions, Postgres};
use sqlx::{AssertSqlSafe, Transaction};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
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
    store: PgStore,
    accounts: String,
}

impl Bank {
    /// Moves money once per transfer id; the caller commits `tx`.
    #[idempotent(key = cmd.id, store = self.store, tx = tx, skip(by), on_conflict = wait, wait_timeout = "60s")]
    async fn transfer(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        cmd: Transfer,
        by: String,
    ) -> Result<Receipt, BankError> {
        let debit = format!(
            "UPDATE {} SET balance = balance - $1 WHERE id = $2 RETURNING balance",
            self.accounts
        );
        let from_balance: i64 = sqlx::query_scalar(AssertSqlSafe(debit))
            .bind(cmd.cents)
            .bind(cmd.from)
            .fetch_one(&mut **tx)
            .await?;
        let credit = format!(
            "UPDATE {} SET balance = balance + $1 WHERE id = $2",
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

    /// One request as a handler runs it: begin, transfer, commit.
    async fn handle(&self, pool: &PgPool, cmd: Transfer, by: &str) -> Result<Receipt, BankError> {
        let mut tx = pool.begin().await?;
        let receipt = self.transfer(&mut tx, cmd, by.to_owned()).await?;
        tx.commit().await?;
        Ok(receipt)
    }

    async fn balances(&self, pool: &PgPool) -> (i64, i64) {
        let q = format!("SELECT balance FROM {} ORDER BY id", self.accounts);
        let rows: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(q))
            .fetch_all(pool)
            .await
            .unwrap();
        (rows[0], rows[1])
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "IDEM-TX {line}").unwrap();
    out.flush().unwrap();
}

/// Opens the bank on `table` (store) and `<table>_acct` (two accounts of 10000 cents).
async fn open(url: &str, table: &str, create: bool) -> (Bank, PgPool) {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await
        .unwrap();
    let store = PgStore::new(pool.clone()).with_table(table).unwrap();
    let accounts = format!("{table}_acct");
    if create {
        store.migrate().await.unwrap();
        let create =
            format!("CREATE TABLE {accounts} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)");
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

async fn drop_bank(bank: &Bank, pool: &PgPool) {
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
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let table = unique("idem_tx");
    let (bank, pool) = open(backend.url(), &table, true).await;
    let bank = Arc::new(bank);
    let workers: Vec<Child> = (0..4)
        .map(|w| {
            spawn(
                backend.url(),
                &table,
                &[("IDEM_TX_WORKER", &format!("p{w}"))],
            )
        })
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
    for worker in workers {
        seen.extend(receipts(worker));
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
    drop_bank(&bank, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_by_the_caller_records_nothing() {
    let Some(backend) = Backend::postgres() else {
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
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let table = unique("idem_tx");
    let (bank, pool) = open(backend.url(), &table, true).await;
    let mut child = spawn(
        backend.url(),
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
    child.kill().unwrap(); // SIGKILL between the effect write and the commit.
    child.wait().unwrap();
    // The server notices the dropped connection and rolls its transaction back; the retry
    // (which first waits on the dying transaction's row lock) runs once.
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
    drop_bank(&bank, &pool).await;
}
