//! An HTTP server killed (SIGKILL) in the middle of a request, and restarted on the same SQL
//! store: the dead owner's claim holds the key until its lease runs out (a retry meanwhile
//! gets 409 + Retry-After), then the retry runs once and its response is replayed after.
//!
//! The servers are this test binary started again (the ignored test `server`), configured
//! through `IDEM_HTTP_*` variables; each says `IDEM-HTTP listening <addr>` when it serves.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql"
))]

mod support;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use idem::http::IdempotencyLayer;
use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdout};
use std::sync::Arc;
use std::time::Duration;
use support::sql::{Backend, Db, unique};

/// The lease of the servers' claims: short, so the test waits little for it, yet longer
/// than a new server takes to start on a loaded machine.
const LEASE: Duration = Duration::from_secs(3);

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "IDEM-HTTP {line}").unwrap();
    out.flush().unwrap();
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// `hang`: the handler says `running` and never finishes. `serve`: it writes its effect
/// and answers 201.
async fn payments(
    State((db, mode)): State<(Arc<Db>, String)>,
    body: String,
) -> (StatusCode, String) {
    if mode == "hang" {
        say("running");
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    db.effect(&body, &mode).await;
    (StatusCode::CREATED, format!("charged {body} by {mode}"))
}

#[test]
#[ignore = "a server process: the kill tests start it with IDEM_HTTP_* set"]
fn server() {
    let Ok(mode) = std::env::var("IDEM_HTTP_MODE") else {
        return;
    };
    let backend = Backend::from_parts(&env("IDEM_HTTP_BACKEND"), env("IDEM_HTTP_URL"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = Arc::new(backend.connect(&env("IDEM_HTTP_TABLE")).await);
        let layer = IdempotencyLayer::new(db.store.clone())
            .unscoped()
            .lease(LEASE);
        let app = Router::new()
            .route("/payments", post(payments))
            .with_state((db, mode))
            .layer(layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        say(&format!("listening {}", listener.local_addr().unwrap()));
        axum::serve(listener, app).await.unwrap();
    });
}

/// A server process that is killed when the test ends, however it ends.
struct ServerProcess {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    url: String,
}

impl ServerProcess {
    fn start(backend: &Backend, table: &str, mode: &str) -> ServerProcess {
        let mut child = support::worker_command("server")
            .env("IDEM_HTTP_MODE", mode)
            .env("IDEM_HTTP_BACKEND", backend.name())
            .env("IDEM_HTTP_URL", backend.url())
            .env("IDEM_HTTP_TABLE", table)
            .spawn()
            .expect("start a server process");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut server = ServerProcess {
            child,
            lines,
            url: String::new(),
        };
        let addr = server.wait_for("listening ");
        server.url = format!("http://{addr}/payments");
        server
    }

    /// Reads the server's lines up to the one that starts with `what`; the rest of it.
    fn wait_for(&mut self, what: &str) -> String {
        for line in self.lines.by_ref() {
            // libtest may print "test server ... " on the same line as ours.
            if let Some((_, ours)) = line.unwrap().split_once("IDEM-HTTP ")
                && let Some(rest) = ours.strip_prefix(what)
            {
                return rest.to_owned();
            }
        }
        panic!("the server ended before saying {what:?}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post_key(url: &str, key: &str, body: &str) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(url)
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
}

async fn a_killed_server_is_recovered_after_the_lease(backend: Backend) {
    let table = unique("idem_http_kill");
    let db = backend.connect(&table).await;

    // The first server takes the request and is killed while its handler runs.
    let mut first = ServerProcess::start(&backend, &table, "hang");
    let url = first.url.clone();
    let request = tokio::spawn(async move { post_key(&url, "txn-kill", "order-1").await });
    first.wait_for("running");
    first.child.kill().unwrap(); // SIGKILL: no release, no cleanup.
    first.child.wait().unwrap();
    assert!(
        request.await.unwrap().is_err(),
        "the client lost its connection"
    );

    // A new server on the same store: the dead owner's lease still holds the key.
    let second = ServerProcess::start(&backend, &table, "serve");
    let early = post_key(&second.url, "txn-kill", "order-1").await.unwrap();
    assert_eq!(early.status(), 409);
    let retry_after: u64 = early.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=LEASE.as_secs()).contains(&retry_after),
        "{retry_after}"
    );

    // After the lease: the retry runs, once; later retries replay it.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(300)).await;
    let retry = post_key(&second.url, "txn-kill", "order-1").await.unwrap();
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(retry.text().await.unwrap(), "charged order-1 by serve");
    let again = post_key(&second.url, "txn-kill", "order-1").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(db.effect_counts().await, vec![("order-1".to_owned(), 1)]);

    drop(second);
    db.drop_tables(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    a_killed_server_is_recovered_after_the_lease(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    if let Some(backend) = Backend::postgres() {
        a_killed_server_is_recovered_after_the_lease(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql() {
    if let Some(backend) = Backend::mysql() {
        a_killed_server_is_recovered_after_the_lease(backend).await;
    }
}
