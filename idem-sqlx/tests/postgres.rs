//! `PgStore` against a real PostgreSQL (`IDEM_TEST_POSTGRES_URL`).
#![cfg(feature = "postgres")]

mod support;

use idem_core::testing;
use idem_sqlx::{ClaimOrder, PgStore};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::sync::Arc;

async fn pool() -> Option<PgPool> {
    let url = support::server_url("IDEM_TEST_POSTGRES_URL", "PostgreSQL")?;
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}"));
    Some(pool)
}

/// A store in a fresh table, dropped when the test is done.
async fn with_store<F, Fut>(test: F)
where
    F: FnOnce(Arc<PgStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(pool) = pool().await else { return };
    let table = support::unique_table("idem_pg");
    let store = PgStore::new(pool.clone()).with_table(&table).unwrap();
    store.migrate().await.unwrap();
    test(Arc::new(store)).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}

support::conformance!(store);

#[tokio::test]
async fn migrate_twice_and_concurrently() {
    with_store(|store| async move {
        store.migrate().await.unwrap();
        let (a, b) = tokio::join!(store.migrate(), store.migrate());
        a.unwrap();
        b.unwrap();
    })
    .await;
}

/// A record whose columns were damaged outside idem: garbage output bytes replay as an
/// `Error::Codec` when decoded, a malformed fingerprint is a store error — never a panic.
#[tokio::test]
async fn corrupt_columns_are_errors_not_panics() {
    use idem_core::{Claim, Fingerprint, Key, Outcome, Output, Store, StoreError};
    use std::time::Duration;

    with_store(|store| async move {
        let fp = Fingerprint::of(&1u8).unwrap();
        let damage = |key: &Key, set: &'static str| {
            let q = format!("UPDATE {} SET {set} WHERE key_digest = $1", store.table());
            let digest = key.digest().as_bytes().to_vec();
            let pool = store.pool().clone();
            async move {
                let done = sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(digest)
                    .execute(&pool)
                    .await
                    .unwrap();
                assert_eq!(done.rows_affected(), 1);
            }
        };
        for (i, set) in [
            "output = '\\xff00ff'::bytea",
            "output = ''::bytea",
            "output = '\\x02'::bytea",
        ]
        .into_iter()
        .enumerate()
        {
            let key = Key::new("corrupt", &i).unwrap();
            let Claim::Claimed(token) = store
                .claim(&key, &fp, Duration::from_secs(30))
                .await
                .unwrap()
            else {
                panic!("fresh key")
            };
            let bytes = idem_core::codec::encode::<idem_core::codec::Bincode, _>(&42u64).unwrap();
            store
                .complete(
                    &key,
                    token,
                    Output {
                        outcome: Outcome::Ok,
                        bytes,
                    },
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
            damage(&key, set).await;
            let Claim::Completed(record) = store
                .claim(&key, &fp, Duration::from_secs(30))
                .await
                .unwrap()
            else {
                panic!("a completed record")
            };
            let decoded =
                idem_core::codec::decode::<idem_core::codec::Bincode, u64>(&record.output.bytes);
            assert!(decoded.is_err(), "{set}: garbage decoded as {decoded:?}");
        }
        let key = Key::new("corrupt", "fingerprint").unwrap();
        store
            .claim(&key, &fp, Duration::from_secs(30))
            .await
            .unwrap();
        damage(&key, "fingerprint = '\\x0102'::bytea").await;
        let claimed = store.claim(&key, &fp, Duration::from_secs(30)).await;
        assert!(
            matches!(&claimed, Err(StoreError::Backend { op: "claim", .. })),
            "{claimed:?}"
        );
    })
    .await;
}
