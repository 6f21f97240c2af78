//! Transactional mode's edges, on SQLite (always available): the macro-free
//! `idem::run_in_tx`, an `Err` followed by a commit, and `errors = cache` inside the
//! transaction.
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::sqlx::SqliteStore;
use idem::{Fingerprint, Key, Options, idempotent};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, Sqlite, SqlitePool, Transaction};
use support::sql::{Backend, unique};
use support::{Calls, PayError};

struct Shop {
    store: SqliteStore,
    pool: SqlitePool,
    orders: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: i64,
}

impl Shop {
    async fn open() -> Shop {
        let backend = Backend::sqlite();
        let table = unique("idem_txs");
        let db = backend.connect(&table).await;
        let support::sql::Effects::Sqlite(pool) = &db.effects else {
            unreachable!("an SQLite backend")
        };
        let pool = pool.clone();
        let orders = format!("{table}_orders");
        let create = format!(
            "CREATE TABLE {orders} (id INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT NOT NULL)"
        );
        sqlx::query(AssertSqlSafe(create))
            .execute(&pool)
            .await
            .unwrap();
        let store = SqliteStore::new(pool.clone()).with_table(&table).unwrap();
        Shop {
            store,
            pool,
            orders,
        }
    }

    async fn begin(&self) -> Transaction<'static, Sqlite> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.unwrap()
    }

    async fn insert(&self, tx: &mut Transaction<'_, Sqlite>, item: &str) -> i64 {
        let q = format!("INSERT INTO {} (item) VALUES (?) RETURNING id", self.orders);
        sqlx::query_scalar(AssertSqlSafe(q))
            .bind(item)
            .fetch_one(&mut **tx)
            .await
            .unwrap()
    }

    async fn order_count(&self) -> i64 {
        let q = format!("SELECT COUNT(*) FROM {}", self.orders);
        sqlx::query_scalar(AssertSqlSafe(q))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Places an order, or refuses it with a permanent (cached) error.
    #[idempotent(key = key, store = self.store, tx = tx, skip(calls, refuse), errors = cache)]
    async fn place(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        calls: &Calls,
        key: &str,
        item: &str,
        refuse: bool,
    ) -> Result<Order, PayError> {
        calls.hit();
        if refuse {
            return Err(PayError::Declined { code: 7 });
        }
        Ok(Order {
            id: self.insert(tx, item).await,
        })
    }

    /// Places an order; an error is not recorded.
    #[idempotent(key = key, store = self.store, tx = tx, skip(calls, fail))]
    async fn place_or_fail(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        calls: &Calls,
        key: &str,
        fail: bool,
    ) -> Result<Order, PayError> {
        calls.hit();
        let id = self.insert(tx, "book").await;
        if fail {
            return Err(PayError::Transient);
        }
        Ok(Order { id })
    }
}

#[tokio::test]
async fn run_in_tx_is_transactional_mode_without_the_macro() {
    let shop = Shop::open().await;
    let calls = Calls::default();
    let options = Options::new("tx_semantics.plain");
    let mut first = None;
    for _ in 0..3 {
        let mut tx = shop.begin().await;
        let key = Key::new("tx_semantics.plain", "order-1").unwrap();
        let fingerprint = Fingerprint::of(&"book").unwrap();
        let order: Result<Order, idem::Error> = idem::run_in_tx(
            &shop.store,
            &mut tx,
            key,
            fingerprint,
            &options,
            async |tx| {
                calls.hit();
                Ok(Order {
                    id: shop.insert(tx, "book").await,
                })
            },
        )
        .await;
        tx.commit().await.unwrap();
        let order = order.unwrap();
        assert_eq!(*first.get_or_insert(order.clone()), order);
    }
    assert_eq!(calls.count(), 1);
    assert_eq!(shop.order_count().await, 1);
    // Another payload under the key is refused before the body.
    let mut tx = shop.begin().await;
    let err = idem::run_in_tx(
        &shop.store,
        &mut tx,
        Key::new("tx_semantics.plain", "order-1").unwrap(),
        Fingerprint::of(&"lamp").unwrap(),
        &options,
        async |_tx: &mut Transaction<'static, Sqlite>| -> Result<Order, idem::Error> {
            unreachable!("the body must not run")
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, idem::Error::PayloadMismatch), "{err:?}");
}

#[tokio::test]
async fn an_error_committed_by_the_caller_leaves_no_record() {
    let shop = Shop::open().await;
    let calls = Calls::default();
    // The caller commits even though the body failed: its partial write commits, but the
    // claim was removed in the transaction, so the retry runs.
    let mut tx = shop.begin().await;
    assert_eq!(
        shop.place_or_fail(&mut tx, &calls, "o-1", true).await,
        Err(PayError::Transient)
    );
    tx.commit().await.unwrap();
    let mut tx = shop.begin().await;
    let order = shop
        .place_or_fail(&mut tx, &calls, "o-1", false)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(calls.count(), 2);
    let mut tx = shop.begin().await;
    assert_eq!(
        shop.place_or_fail(&mut tx, &calls, "o-1", false)
            .await
            .unwrap(),
        order
    );
    tx.commit().await.unwrap();
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn errors_cache_records_the_error_in_the_transaction() {
    let shop = Shop::open().await;
    let calls = Calls::default();
    let mut tx = shop.begin().await;
    let declined = PayError::Declined { code: 7 };
    assert_eq!(
        shop.place(&mut tx, &calls, "o-2", "lamp", true).await,
        Err(declined.clone())
    );
    tx.commit().await.unwrap();
    // Replayed from the record the transaction committed, without running the body.
    let mut tx = shop.begin().await;
    assert_eq!(
        shop.place(&mut tx, &calls, "o-2", "lamp", false).await,
        Err(declined)
    );
    tx.rollback().await.unwrap();
    assert_eq!(calls.count(), 1);
    // Rolled back instead, the same error leaves nothing: the retry runs.
    let mut tx = shop.begin().await;
    shop.place(&mut tx, &calls, "o-3", "lamp", true)
        .await
        .unwrap_err();
    tx.rollback().await.unwrap();
    let mut tx = shop.begin().await;
    let order = shop
        .place(&mut tx, &calls, "o-3", "lamp", false)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(calls.count(), 3);
    assert_eq!(shop.order_count().await, 1);
    assert!(order.id > 0);
}
