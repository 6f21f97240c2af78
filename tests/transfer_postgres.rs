//! Transactional mode on PostgreSQL: the classic double charge. Money moves between two
//! account rows in the caller's transaction, with the claim and the receipt in the same
//! transaction: racing tasks, racing processes, retries, a kill -9 before commit and a
//! caller's rollback all leave the balances changed exactly once. The scenarios are in
//! `support/bank.rs`.
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::idempotent;
use idem::sqlx::PgStore;
use sqlx::postgres::{PgPool, PgPoolOptions, Postgres};
use sqlx::{AssertSqlSafe, Transaction};
use support::bank::{self, Bank, BankError, Receipt, Transfer, accounts_table};
use support::sql::Backend;

struct PgBank {
    store: PgStore,
    accounts: String,
    pool: PgPool,
}

impl PgBank {
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
        bank::stall_if_asked().await;
        Ok(Receipt {
            transfer_id: cmd.id,
            by,
            from_balance,
        })
    }
}

impl Bank for PgBank {
    async fn connect(url: &str, table: &str) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await
            .unwrap();
        let store = PgStore::new(pool.clone()).with_table(table).unwrap();
        let accounts = accounts_table(table);
        PgBank {
            store,
            accounts,
            pool,
        }
    }

    async fn create_tables(&self) {
        self.store.migrate().await.unwrap();
        self.query(format!(
            "CREATE TABLE {} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
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

    /// Begin, transfer, commit.
    async fn handle(&self, cmd: Transfer, by: &str) -> Result<Receipt, BankError> {
        let mut tx = self.pool.begin().await?;
        let receipt = self.transfer(&mut tx, cmd, by.to_owned()).await?;
        tx.commit().await?;
        Ok(receipt)
    }

    async fn rolled_back(&self, cmd: Transfer, by: &str) -> Result<Receipt, BankError> {
        let mut tx = self.pool.begin().await?;
        let result = self.transfer(&mut tx, cmd, by.to_owned()).await;
        tx.rollback().await?;
        result
    }
}

#[test]
#[ignore = "a worker process: the transfer tests start it with IDEM_TX_* set"]
fn tx_worker() {
    bank::worker::<PgBank>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_tasks_and_processes_move_the_money_once() {
    if let Some(backend) = Backend::postgres() {
        bank::race::<PgBank>(backend.url()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_by_the_caller_records_nothing() {
    if let Some(backend) = Backend::postgres() {
        bank::caller_rollback::<PgBank>(backend.url()).await;
    }
}

/// The server notices the dropped connection and rolls its transaction back; the retry
/// (which first waits on the dying transaction's row lock) runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_before_commit_leaves_no_record_and_no_effect() {
    if let Some(backend) = Backend::postgres() {
        bank::kill_before_commit::<PgBank>(backend.url()).await;
    }
}
