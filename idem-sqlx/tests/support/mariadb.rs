//! A MariaDB server of the test's own, for settings the shared server must keep (its
//! `max_allowed_packet`, say): a new data directory, a free port on loopback, started with
//! the test's arguments and killed (its directory removed) when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; `url()` reaches its `test` database as root.
pub struct OwnMariaDb {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl OwnMariaDb {
    /// A server started with `args`, or `None` (after a note) where this machine has no
    /// MariaDB binaries — which fails instead under `IDEM_REQUIRE_SERVERS=1`.
    pub async fn start(args: &[&str]) -> Option<OwnMariaDb> {
        let dir = std::env::temp_dir().join(super::unique_table("idem_mariadb"));
        let data = dir.join("data");
        let installed = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !installed.is_ok_and(|s| s.success()) {
            let _ = std::fs::remove_dir_all(&dir);
            if std::env::var("IDEM_REQUIRE_SERVERS").is_ok_and(|v| v == "1") {
                panic!("IDEM_REQUIRE_SERVERS=1 but mariadb-install-db could not make a server");
            }
            eprintln!("note: SKIPPED: no MariaDB binaries to start a server of the test's own");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new("mariadbd")
            .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .args(["--skip-log-bin", "--innodb-buffer-pool-size=32M"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd starts");
        let server = OwnMariaDb { child, dir, port };
        let start = Instant::now();
        let root = format!("mysql://root@127.0.0.1:{port}/mysql");
        loop {
            match sqlx::MySqlPool::connect(&root).await {
                Ok(pool) => {
                    sqlx::query("CREATE DATABASE IF NOT EXISTS test")
                        .execute(&pool)
                        .await
                        .unwrap();
                    pool.close().await;
                    return Some(server);
                }
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    panic!("the test's own MariaDB did not start: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }
}

impl Drop for OwnMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
