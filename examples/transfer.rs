//! Money moves once, however often the request is retried: transactional mode.
//!
//! `cargo run --example transfer --features sqlite` — on an SQLite file;
//! `DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run --example transfer --features sqlite,postgres`
//! — on PostgreSQL.
//!
//! The claim, the two balance updates and the receipt are written in the handler's own
//! transaction: they commit together or not at all. A crash before the commit leaves
//! nothing behind (no stuck claim, no half transfer); a retry after the commit replays the
//! receipt without touching the balances.

use idem::idempotent;
use serde::{Deserialize, Serialize};

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
    from_balance: i64,
    to_balance: i64,
}

#[derive(Debug)]
enum BankError {
    Idempotency(idem::Error),
    Database(sqlx::Error),
}

impl From<idem::Error> for BankError {
    fn from(e: idem::Error) -> Self {
        BankError::Idempotency(e)
    }
}

impl From<sqlx::Error> for BankError {
    fn from(e: sqlx::Error) -> Self {
        BankError::Database(e)
    }
}

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BankError::Idempotency(e) => write!(f, "{e}"),
            BankError::Database(e) => write!(f, "database: {e}"),
        }
    }
}

impl std::error::Error for BankError {}

mod sqlite {
    use super::*;
    use idem::sqlx::SqliteStore;
    use sqlx::{Sqlite, SqlitePool, Transaction};

    /// Debits and credits once per transfer id; the caller commits `tx`.
    #[idempotent(key = cmd.id, store = store, tx = tx)]
    pub(crate) async fn transfer(
        store: &SqliteStore,
        tx: &mut Transaction<'_, Sqlite>,
        cmd: Transfer,
    ) -> Result<Receipt, BankError> {
        println!(
            "  moving {} cents from {} to {}",
            cmd.cents, cmd.from, cmd.to
        );
        let from_balance = sqlx::query_scalar(
            "UPDATE accounts SET balance = balance - ? WHERE id = ? RETURNING balance",
        )
        .bind(cmd.cents)
        .bind(cmd.from)
        .fetch_one(&mut **tx)
        .await?;
        let to_balance = sqlx::query_scalar(
            "UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING balance",
        )
        .bind(cmd.cents)
        .bind(cmd.to)
        .fetch_one(&mut **tx)
        .await?;
        Ok(Receipt {
            transfer_id: cmd.id,
            from_balance,
            to_balance,
        })
    }

    pub(crate) async fn run() -> Result<(), Box<dyn std::error::Error>> {
        let path =
            std::env::temp_dir().join(format!("idem-transfer-{}.sqlite", std::process::id()));
        let pool = SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
        let store = SqliteStore::new(pool.clone());
        store.migrate().await?;
        sqlx::query("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
            .execute(&pool)
            .await?;
        sqlx::query("INSERT INTO accounts VALUES (1, 10000), (2, 0)")
            .execute(&pool)
            .await?;

        let cmd = Transfer {
            id: "tr-1".into(),
            from: 1,
            to: 2,
            cents: 2500,
        };
        for attempt in ["first request", "client retry", "broker redelivery"] {
            println!("{attempt}:");
            // SQLite: take the write lock up front (see SqliteStore's docs).
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let receipt = transfer(&store, &mut tx, cmd.clone()).await?;
            tx.commit().await?;
            println!("  -> {receipt:?}");
        }

        println!("a crash before commit (simulated by a rollback):");
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let crashed = Transfer {
            id: "tr-2".into(),
            ..cmd
        };
        transfer(&store, &mut tx, crashed.clone()).await?;
        tx.rollback().await?;
        println!("retry of the crashed transfer:");
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let receipt = transfer(&store, &mut tx, crashed).await?;
        tx.commit().await?;
        println!("  -> {receipt:?}");

        let balances: Vec<i64> = sqlx::query_scalar("SELECT balance FROM accounts ORDER BY id")
            .fetch_all(&pool)
            .await?;
        println!("balances: {balances:?} (two transfers of 2500, each applied once)");
        assert_eq!(balances, [5000, 5000]);
        pool.close().await;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use idem::sqlx::PgStore;
    use sqlx::{PgPool, Postgres, Transaction};

    #[idempotent(key = cmd.id, store = store, tx = tx)]
    pub(crate) async fn transfer(
        store: &PgStore,
        tx: &mut Transaction<'_, Postgres>,
        cmd: Transfer,
    ) -> Result<Receipt, BankError> {
        println!(
            "  moving {} cents from {} to {}",
            cmd.cents, cmd.from, cmd.to
        );
        let from_balance = sqlx::query_scalar("UPDATE idem_example_accounts SET balance = balance - $1 WHERE id = $2 RETURNING balance")
            .bind(cmd.cents)
            .bind(cmd.from)
            .fetch_one(&mut **tx)
            .await?;
        let to_balance = sqlx::query_scalar("UPDATE idem_example_accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance")
            .bind(cmd.cents)
            .bind(cmd.to)
            .fetch_one(&mut **tx)
            .await?;
        Ok(Receipt {
            transfer_id: cmd.id,
            from_balance,
            to_balance,
        })
    }

    pub(crate) async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
        let pool = PgPool::connect(url).await?;
        let store = PgStore::new(pool.clone());
        store.migrate().await?;
        sqlx::query("DROP TABLE IF EXISTS idem_example_accounts")
            .execute(&pool)
            .await?;
        sqlx::query(
            "CREATE TABLE idem_example_accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("INSERT INTO idem_example_accounts VALUES (1, 10000), (2, 0)")
            .execute(&pool)
            .await?;
        let cmd = Transfer {
            id: format!("tr-{}", std::process::id()),
            from: 1,
            to: 2,
            cents: 2500,
        };
        // Three replicas handle the same request at once: one moves the money, the others
        // wait on its uncommitted row, then replay its receipt.
        let handle = |who: &'static str| {
            let (pool, store, cmd) = (pool.clone(), store.clone(), cmd.clone());
            async move {
                let mut tx = pool.begin().await?;
                let receipt = transfer(&store, &mut tx, cmd).await?;
                tx.commit().await?;
                println!("{who} -> {receipt:?}");
                Ok::<_, BankError>(receipt)
            }
        };
        let (a, b, c) = tokio::join!(
            handle("replica a"),
            handle("replica b"),
            handle("replica c")
        );
        let (a, b, c) = (a?, b?, c?);
        assert!(a == b && b == c);
        let balances: Vec<i64> =
            sqlx::query_scalar("SELECT balance FROM idem_example_accounts ORDER BY id")
                .fetch_all(&pool)
                .await?;
        println!("balances: {balances:?} (one transfer of 2500)");
        assert_eq!(balances, [7500, 2500]);
        sqlx::query("DROP TABLE idem_example_accounts")
            .execute(&pool)
            .await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        #[cfg(feature = "postgres")]
        Ok(url) if url.starts_with("postgres") => postgres::run(&url).await,
        _ => sqlite::run().await,
    }
}
