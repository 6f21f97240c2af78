//! Transactional mode on a `&mut self` method whose store is a field of `self` and whose body
//! mutates `self` and writes through the transaction; its future is `Send` (as axum handlers
//! and `tokio::spawn` need) although the transaction is borrowed with its own lifetime.
use idem::idempotent;
use idem::sqlx::SqliteStore;
use sqlx::{Sqlite, Transaction};

struct Ledger {
    store: SqliteStore,
    posted: u64,
}

impl Ledger {
    #[idempotent(key = id, store = self.store, tx = tx)]
    async fn post(&mut self, tx: &mut Transaction<'_, Sqlite>, id: u64) -> Result<u64, idem::Error> {
        sqlx::query("INSERT INTO posts (id) VALUES (?)")
            .bind(id as i64)
            .execute(&mut **tx)
            .await
            .map_err(|e| idem::Error::Store(idem::StoreError::backend("post", e)))?;
        self.posted += 1;
        Ok(self.posted)
    }
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // One connection: every connection to `sqlite::memory:` is a database of its own.
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE posts (id INTEGER PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        let store = SqliteStore::new(pool.clone());
        store.migrate().await.unwrap();
        let mut ledger = Ledger { store, posted: 0 };
        for _ in 0..2 {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            assert_eq!(assert_send(ledger.post(&mut tx, 7)).await.unwrap(), 1);
            tx.commit().await.unwrap();
        }
        assert_eq!(ledger.posted, 1);
    });
}
