//! Transactional mode on MySQL/MariaDB (InnoDB): the classic double charge. Money moves
//! between two account rows in the caller's transaction, with the claim and the receipt in
//! the same transaction: racing tasks, racing processes, retries, a kill -9 before commit
//! and a caller's rollback all leave the balances changed exactly once. The shared
//! scenarios are in `support/bank.rs`.
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::idempotent;
use idem::sqlx::MySqlStore;
use sqlx::mysql::{MySql, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Transaction};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::bank::{self, Bank, BankError, Receipt, Transfer, accounts_table, transfer_cmd};
use support::sql::{Backend, unique};

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

struct MySqlBank {
    store: MySqlStore,
    accounts: String,
    pool: MySqlPool,
    /// Transactions run again after a deadlock.
    deadlocks: AtomicUsize,
}

impl MySqlBank {
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
        bank::stall_if_asked().await;
        Ok(Receipt {
            transfer_id: cmd.id,
            by,
            from_balance,
        })
    }

    /// One attempt of [`handle`](Bank::handle).
    async fn handle_once(&self, cmd: Transfer, by: &str) -> Result<Receipt, BankError> {
        let mut tx = self.pool.begin().await?;
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
}

impl Bank for MySqlBank {
    async fn connect(url: &str, table: &str) -> Self {
        let pool = MySqlPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await
            .unwrap();
        let store = MySqlStore::new(pool.clone()).with_table(table).unwrap();
        MySqlBank {
            store,
            accounts: accounts_table(table),
            pool,
            deadlocks: AtomicUsize::new(0),
        }
    }

    async fn create_tables(&self) {
        self.store.migrate().await.unwrap();
        self.query(format!(
            "CREATE TABLE {} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
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

    /// Begin, read, transfer, commit — and, as InnoDB asks of every transaction, run it
    /// again if it was chosen as a deadlock victim.
    async fn handle(&self, cmd: Transfer, by: &str) -> Result<Receipt, BankError> {
        let mut attempts = 0;
        loop {
            match self.handle_once(cmd.clone(), by).await {
                Err(e) if e.is_deadlock() && attempts < 10 => {
                    attempts += 1;
                    self.deadlocks.fetch_add(1, Ordering::SeqCst);
                }
                result => return result,
            }
        }
    }

    async fn rolled_back(&self, cmd: Transfer, by: &str) -> Result<Receipt, BankError> {
        let mut tx = self.pool.begin().await?;
        let result = self.transfer(&mut tx, cmd, by.to_owned()).await;
        tx.rollback().await?;
        result
    }

    fn deadlocks(&self) -> usize {
        self.deadlocks.load(Ordering::SeqCst)
    }
}

#[test]
#[ignore = "a worker process: the transfer tests start it with IDEM_TX_* set"]
fn tx_worker() {
    bank::worker::<MySqlBank>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_tasks_and_processes_move_the_money_once() {
    if let Some(backend) = Backend::mysql() {
        bank::race::<MySqlBank>(backend.url()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_by_the_caller_records_nothing() {
    if let Some(backend) = Backend::mysql() {
        bank::caller_rollback::<MySqlBank>(backend.url()).await;
    }
}

/// The server notices the dropped connection and rolls its transaction back; the retry
/// (which first waits on the dying transaction's row lock) runs once. The worker's other
/// tasks were waiting for the same lock; their server threads notice their dropped
/// connections only once the wait ends, and may first make the retry's transaction a
/// deadlock victim, which `handle` runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_before_commit_leaves_no_record_and_no_effect() {
    if let Some(backend) = Backend::mysql() {
        bank::kill_before_commit::<MySqlBank>(backend.url()).await;
    }
}

/// `wait_timeout` is InnoDB's lock wait timeout for the claim (`Error::WaitTimeout` after
/// about that long, before any effect), and the session's own timeout is back afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_timeout_is_the_lock_wait_timeout_of_the_claim() {
    let Some(backend) = Backend::mysql() else {
        return;
    };
    let bank = MySqlBank::open(backend.url(), &unique("idem_tx")).await;
    let pool = &bank.pool;
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
    assert_eq!(bank.balances().await, (9750, 10250));
    bank.close().await;
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
    let bank = Arc::new(MySqlBank::open(backend.url(), &table).await);
    let pool = &bank.pool;
    let waiting = sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM information_schema.INNODB_TRX \
         WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE 'INSERT IGNORE INTO `{table}` %'"
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
                let (bank, id) = (bank.clone(), id.clone());
                tokio::spawn(
                    async move { bank.handle_once(transfer_cmd(&id), &format!("w{w}")).await },
                )
            })
            .collect();
        // All three wait for the owner's insert. (InnoDB refreshes INNODB_TRX only when it
        // was not read for 100 ms.)
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let blocked: i64 = sqlx::query_scalar(waiting.clone())
                .fetch_one(pool)
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
                    bank.handle(transfer_cmd(&id), &format!("w{w} again"))
                        .await
                        .unwrap()
                }
            };
            seen.insert(r.line());
        }
        assert_eq!(
            (ran, victims),
            (1, 2),
            "round {round}: one ran, the others were victims"
        );
        assert_eq!(seen.len(), 1, "every caller got the same receipt: {seen:?}");
    }
    assert_eq!(
        bank.balances().await,
        (10000 - 250 * rounds, 10000 + 250 * rounds),
        "each transfer moved the money once"
    );
    bank.close().await;
}
