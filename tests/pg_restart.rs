//! The real PostgreSQL server is restarted in the middle of a run (CI: `IDEM_TEST_PG_RESTART=1`,
//! as root on a machine whose cluster `pg_ctlcluster` manages). Its own test binary, so no
//! other test shares the outage.
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::idempotent;
use idem::sqlx::PgStore;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};
use support::sql::{Backend, unique};
use support::{AppError, Calls};

#[idempotent(key = key, store = store, skip(calls))]
async fn guarded(store: &PgStore, calls: &Calls, key: u32) -> Result<u32, AppError> {
    calls.hit();
    Ok(key * 2)
}

fn pg_ctlcluster(action: &str) {
    let clusters = std::fs::read_dir("/etc/postgresql").expect("/etc/postgresql");
    for version in clusters {
        let version = version.unwrap().file_name();
        let status = Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                version.to_str().unwrap(),
                "main",
                action,
            ])
            .status()
            .expect("run pg_ctlcluster");
        assert!(status.success(), "pg_ctlcluster {action} failed");
    }
}

/// Starts the server again even if the test fails half-way.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args([
                "-c",
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            ])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_run_is_survived() {
    if std::env::var("IDEM_TEST_PG_RESTART").as_deref() != Ok("1") {
        let _ = writeln!(
            std::io::stderr(),
            "note: SKIPPED the PostgreSQL restart test: set IDEM_TEST_PG_RESTART=1 (it restarts the server)"
        );
        return;
    }
    let backend = Backend::postgres().expect("IDEM_TEST_POSTGRES_URL");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(backend.url())
        .await
        .unwrap();
    let table = unique("idem_restart");
    let store = PgStore::new(pool).with_table(&table).unwrap();
    store.migrate().await.unwrap();
    let calls = Calls::default();
    for key in 0..20 {
        assert_eq!(guarded(&store, &calls, key).await.unwrap(), key * 2);
    }

    let _restart = Restart;
    pg_ctlcluster("stop");
    let down = guarded(&store, &calls, 100).await;
    assert!(
        matches!(down, Err(AppError::Idem(idem::Error::Store(_)))),
        "{down:?}"
    );
    pg_ctlcluster("start");

    // The pool reconnects; keep calling until the server accepts connections again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match guarded(&store, &calls, 100).await {
            Ok(v) => {
                assert_eq!(v, 200);
                break;
            }
            Err(AppError::Idem(idem::Error::Store(_))) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(other) => panic!("after the restart: {other:?}"),
        }
    }
    // Records written before the restart replay; nothing ran twice.
    for key in 0..20 {
        assert_eq!(guarded(&store, &calls, key).await.unwrap(), key * 2);
    }
    assert_eq!(calls.count(), 21);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(store.pool())
        .await
        .unwrap();
}
