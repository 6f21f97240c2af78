//! Configuration and failure at the edges: hostile prefixes are refused as `Error::Config`,
//! a bad URL too, and an unreachable server is a clean `Error::Store`, never a panic.

mod support;

use idem::Error;
use idem::redis::RedisStore;

#[tokio::test]
async fn hostile_prefixes_are_refused() {
    let Some(store) = support::store("prefix").await else {
        return;
    };
    let long = "p".repeat(129);
    for bad in [
        "",
        "{slot}",
        "a{b",
        "}",
        "with space",
        "tab\t",
        "new\nline",
        "nul\0",
        "ünï",
        &long,
    ] {
        match store.clone().with_prefix(bad) {
            Err(Error::Config(msg)) => assert!(msg.contains("prefix"), "{msg}"),
            other => panic!("prefix {bad:?} was not refused: {other:?}"),
        }
    }
    for good in ["idem:", "billing:idem:", "a"] {
        let store = store.clone().with_prefix(good).expect(good);
        assert_eq!(store.prefix(), good);
    }
}

#[tokio::test]
async fn a_bad_url_is_a_config_error() {
    match RedisStore::connect("not a url").await {
        Err(Error::Config(_)) => {}
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_store_error() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let started = std::time::Instant::now();
    match RedisStore::connect(&format!("redis://127.0.0.1:{port}")).await {
        Err(e @ Error::Store(_)) => assert!(e.is_retryable(), "{e}"),
        other => panic!("expected Error::Store, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
