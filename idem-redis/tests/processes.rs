//! 4 processes × 16 tasks race on the same 10 keys through `#[idempotent]` and the shared
//! Redis server: each key's body runs exactly once in all (counted by an effect the body
//! writes to Redis itself), and every caller in every process gets the same value.
//!
//! The workers are this test binary run again with `IDEM_REDIS_WORKER_PREFIX` set: the
//! `worker` test does nothing without it.

mod support;

use idem::idempotent;
use idem::redis::RedisStore;
use idem::redis::redis;
use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const PROCESSES: usize = 4;
const TASKS: usize = 16;
const KEYS: usize = 10;

/// The body: counts its run in Redis (the effect), then answers with who ran it.
#[idempotent(key = key, store = store, skip(fx), on_conflict = wait, wait_timeout = "30s")]
async fn effect(
    store: &RedisStore,
    fx: &redis::aio::MultiplexedConnection,
    key: &str,
) -> Result<String, idem::Error> {
    let mut fx = fx.clone();
    let counter = format!("{}fx:{key}", store.prefix());
    redis::cmd("INCR")
        .arg(&counter)
        .query_async::<i64>(&mut fx)
        .await
        .map_err(|e| idem::Error::Store(idem::StoreError::backend("effect", e)))?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(format!("pid {}", std::process::id()))
}

async fn effects_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(support::url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker() {
    let Ok(prefix) = std::env::var("IDEM_REDIS_WORKER_PREFIX") else {
        return; // run directly: not a worker
    };
    let store = RedisStore::connect(&support::url())
        .await
        .unwrap()
        .with_prefix(&prefix)
        .unwrap();
    let (store, fx) = (Arc::new(store), Arc::new(effects_connection().await));
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        for _ in 0..TASKS {
            let (store, fx) = (store.clone(), fx.clone());
            tasks.push(tokio::spawn(async move {
                let key = format!("key-{k}");
                let value = effect(&store, &fx, &key).await.expect("call failed");
                (key, value)
            }));
        }
    }
    for task in tasks {
        let (key, value) = task.await.expect("task panicked");
        println!("RESULT {key}={value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_run_each_body_once() {
    if std::env::var("IDEM_REDIS_WORKER_PREFIX").is_ok() {
        return;
    }
    // Skips (or fails, when required) without a server.
    let Some(store) = support::store("processes").await else {
        return;
    };
    let prefix = store.prefix().to_owned();
    let exe = std::env::current_exe().expect("test binary");
    let workers: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "worker", "--nocapture", "--test-threads", "1"])
                .env("IDEM_REDIS_WORKER_PREFIX", &prefix)
                .output()
        })
        .map(|out| std::thread::spawn(move || out))
        .collect();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut calls = 0;
    for worker in workers {
        let out = worker.join().expect("worker thread").expect("worker ran");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The harness's own "test worker ... " may start the first line.
        let results = stdout
            .lines()
            .filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r));
        for line in results {
            let (key, value) = line.split_once('=').expect("key=value");
            calls += 1;
            let first = values
                .entry(key.to_owned())
                .or_insert_with(|| value.to_owned());
            assert_eq!(first, value, "{key}: callers got different values");
        }
    }
    assert_eq!(calls, PROCESSES * TASKS * KEYS, "every call reported");
    let mut fx = effects_connection().await;
    for k in 0..KEYS {
        let runs: i64 = redis::cmd("GET")
            .arg(format!("{prefix}fx:key-{k}"))
            .query_async(&mut fx)
            .await
            .unwrap();
        assert_eq!(
            runs, 1,
            "key-{k}: body executions across {PROCESSES} processes"
        );
    }
}
