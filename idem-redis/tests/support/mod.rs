//! The Redis server as tests see it: where it is, and a store under a prefix of its own.
//!
//! The server comes from `IDEM_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). If it
//! cannot be reached the test is skipped with a note on the terminal — a failure instead when
//! `IDEM_REQUIRE_SERVERS=1`, as in CI.

#![allow(dead_code)] // each test file uses part of it

pub(crate) mod cluster;
pub(crate) mod race;

use idem::redis::RedisStore;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

/// The server's URL.
pub(crate) fn url() -> String {
    std::env::var("IDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether an unreachable server fails the test instead of skipping it.
fn required() -> bool {
    std::env::var("IDEM_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

/// A prefix no other run or test uses: process id, time, and a counter.
pub(crate) fn unique_prefix(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("idem-test:{what}:{}-{nanos}-{n}:", std::process::id())
}

/// The Redis key of `key`'s record under `prefix`, as the store names it: the prefix, then
/// the key digest in lowercase hex.
pub(crate) fn record_key(prefix: &str, key: &idem::Key) -> String {
    let hex: String = key
        .digest()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}{hex}")
}

/// A store on the test server under a fresh prefix, or `None` (skipped, with a note) when
/// the server cannot be reached and servers are not required.
pub(crate) async fn store(what: &str) -> Option<RedisStore> {
    let url = url();
    match RedisStore::connect(&url).await {
        Ok(store) => Some(
            store
                .with_prefix(&unique_prefix(what))
                .expect("the test prefix is valid"),
        ),
        Err(e) if required() => panic!("Redis at {url} is required (IDEM_REQUIRE_SERVERS=1): {e}"),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "note: skipping {what}: Redis at {url} is not reachable ({e}); set \
                 IDEM_TEST_REDIS_URL, or IDEM_REQUIRE_SERVERS=1 to fail instead"
            );
            None
        }
    }
}

/// Whether `redis-server` is installed; if not, says so and skips — or fails, when
/// servers are required.
pub(crate) fn have_redis_server() -> bool {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert!(
        !required(),
        "redis-server is required (IDEM_REQUIRE_SERVERS=1) but not installed"
    );
    let _ = writeln!(std::io::stderr(), "note: skipping: no redis-server binary");
    false
}

/// A `redis-server` child on `port` (no persistence), killed when dropped: a server a test
/// may restart or inspect without disturbing the shared one.
pub(crate) struct Server(Child);

impl Server {
    pub(crate) fn start(port: u16) -> std::io::Result<Server> {
        Server::start_with(port, &[])
    }

    /// Started with `args` besides the defaults (`--proto-max-bulk-len 1mb`, say).
    pub(crate) fn start_with(port: u16, args: &[&str]) -> std::io::Result<Server> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Server(child))
    }

    /// Waits for the process to exit (after `SHUTDOWN NOSAVE`).
    pub(crate) fn wait_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not exit after SHUTDOWN NOSAVE");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test-owned server (started with `args`), a store connected to it and a connection
/// for the test's own commands; `None` (skipped) without a `redis-server` binary. Bind
/// `server` for as long as the test uses the store: dropping it stops the server.
pub(crate) struct Owned {
    pub(crate) store: RedisStore,
    pub(crate) admin: redis::aio::MultiplexedConnection,
    pub(crate) server: Server,
}

pub(crate) async fn own_server(args: &[&str]) -> Option<Owned> {
    if !have_redis_server() {
        return None;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let server = Server::start_with(port, args).expect("start redis-server");
    let store = connect_retrying(&url).await;
    let admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    Some(Owned {
        store,
        admin,
        server,
    })
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Connects to the test-owned server, retrying while it starts.
pub(crate) async fn connect_retrying(url: &str) -> RedisStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RedisStore::connect(url).await {
            Ok(store) => return store,
            Err(e) if Instant::now() > deadline => panic!("test redis-server never came up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
