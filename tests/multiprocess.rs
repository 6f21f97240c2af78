//! Exactly once across OS processes, against every SQL store: processes racing on the same
//! keys, a worker killed between claim and complete, and app clocks skewed by hours.
//!
//! The parent tests start this same test binary again as worker processes (the ignored
//! test `worker`), configured through `IDEM_MP_*` variables.
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use idem::store::{Output, Token};
use idem::{Key, StoreError, idempotent};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::AppError;
use support::sql::{Backend, Db, unique};

const PROCESSES: usize = 4;
const TASKS: usize = 8;
const KEYS: u32 = 200;
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[idempotent(key = key, store = db.store, skip(db, who), name = "mp.apply", on_conflict = wait, wait_timeout = "120s")]
async fn apply(db: &Db, who: String, key: u32) -> Result<String, AppError> {
    db.effect(&key.to_string(), &who).await;
    Ok(who)
}

#[idempotent(key = key, store = db.store, skip(db), name = "mp.crash", lease = "1s")]
async fn crash_in_body(db: &Db, key: &str) -> Result<String, AppError> {
    say("claimed");
    tokio::time::sleep(Duration::from_secs(600)).await;
    db.effect(key, "the killed worker").await;
    Ok("never".into())
}

#[idempotent(key = key, store = db.store, skip(db), name = "mp.crash", lease = "1s")]
async fn retry_after_crash(db: &Db, key: &str) -> Result<String, AppError> {
    db.effect(key, "retry").await;
    Ok("retried".into())
}

#[idempotent(key = key, store = db.store, skip(db, label), name = "mp.skew", ttl = "3s")]
async fn skewed(db: &Db, key: &str, label: &str) -> Result<String, AppError> {
    Ok(label.to_owned())
}

/// One protocol line on stdout, flushed at once.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "IDEM-MP {line}").unwrap();
    out.flush().unwrap();
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

#[test]
#[ignore = "a worker process: the multi-process tests start it with IDEM_MP_* set"]
fn worker() {
    let Ok(mode) = std::env::var("IDEM_MP_MODE") else {
        return;
    };
    let backend = Backend::from_parts(&env("IDEM_MP_BACKEND"), env("IDEM_MP_URL"));
    let table = env("IDEM_MP_TABLE");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let coalesce = std::env::var("IDEM_MP_COALESCE").is_ok_and(|v| v == "1");
        let db = Arc::new(backend.open(&table, coalesce).await);
        match mode.as_str() {
            "race" => {
                let worker: u32 = env("IDEM_MP_WORKER").parse().unwrap();
                let tasks: Vec<_> = (0..TASKS as u32)
                    .map(|task| {
                        let db = db.clone();
                        tokio::spawn(async move {
                            let mut lines = Vec::new();
                            for i in 0..KEYS {
                                // Every task walks the keys in its own order.
                                let key = (i * 7 + task * 13 + worker * 29) % KEYS;
                                let out =
                                    apply(&db, format!("w{worker}t{task}"), key).await.unwrap();
                                lines.push(format!("{key} {out}"));
                            }
                            lines
                        })
                    })
                    .collect();
                for task in tasks {
                    for line in task.await.unwrap() {
                        say(&line);
                    }
                }
            }
            "crash" => {
                let _ = crash_in_body(&db, &env("IDEM_MP_KEY")).await;
            }
            "skew" => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                say(&format!("clock {now}"));
                let out = skewed(&db, &env("IDEM_MP_KEY"), &env("IDEM_MP_LABEL"))
                    .await
                    .unwrap();
                say(&format!("output {out}"));
            }
            other => panic!("unknown mode {other}"),
        }
    });
}

/// Starts a worker process of this test binary.
fn spawn_worker(backend: &Backend, table: &str, vars: &[(&str, String)]) -> Child {
    let mut command = support::worker_command("worker");
    command
        .env("IDEM_MP_BACKEND", backend.name())
        .env("IDEM_MP_URL", backend.url())
        .env("IDEM_MP_TABLE", table);
    for (name, value) in vars {
        command.env(name, value);
    }
    command.spawn().expect("start a worker process")
}

/// The protocol lines of a finished worker; it must have succeeded.
fn lines_of(child: Child) -> Vec<String> {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "a worker failed: {:?}",
        output.status
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        // libtest may print "test worker ... " on the same line as the first of ours.
        .filter_map(|l| l.split_once("IDEM-MP ").map(|(_, line)| line.to_owned()))
        .collect()
}

async fn processes_race_on_the_same_keys(backend: Backend) {
    processes_race(backend, false).await;
}

/// The race with every process's claims and completes coalesced.
async fn coalesced_processes_race_on_the_same_keys(backend: Backend) {
    processes_race(backend, true).await;
}

async fn processes_race(backend: Backend, coalesce: bool) {
    let table = unique("idem_mp");
    let db = backend.open(&table, coalesce).await;
    let workers: Vec<Child> = (0..PROCESSES)
        .map(|w| {
            spawn_worker(
                &backend,
                &table,
                &[
                    ("IDEM_MP_MODE", "race".into()),
                    ("IDEM_MP_WORKER", w.to_string()),
                    ("IDEM_MP_COALESCE", u8::from(coalesce).to_string()),
                ],
            )
        })
        .collect();
    let mut outputs: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let mut calls = 0;
    for worker in workers {
        for line in lines_of(worker) {
            let (key, out) = line.split_once(' ').unwrap();
            outputs
                .entry(key.parse().unwrap())
                .or_default()
                .insert(out.to_owned());
            calls += 1;
        }
    }
    assert_eq!(
        calls,
        PROCESSES * TASKS * KEYS as usize,
        "every call returned"
    );
    assert_eq!(outputs.len(), KEYS as usize);
    for (key, outs) in &outputs {
        assert_eq!(
            outs.len(),
            1,
            "key {key}: callers got different outputs {outs:?}"
        );
    }
    let effects = db.effect_counts().await;
    assert_eq!(effects.len(), KEYS as usize, "every key has an effect");
    for (key, rows) in &effects {
        assert_eq!(*rows, 1, "key {key} was executed {rows} times");
    }
    db.drop_tables(&table).await;
}

async fn a_killed_owner_is_recovered_after_its_lease(backend: Backend) {
    killed_owner(backend, false).await;
}

/// The killed owner, its claim and the retries coalesced.
async fn a_coalesced_killed_owner_is_recovered_after_its_lease(backend: Backend) {
    killed_owner(backend, true).await;
}

async fn killed_owner(backend: Backend, coalesce: bool) {
    let table = unique("idem_crash");
    let db = backend.open(&table, coalesce).await;
    let key = "order-1";
    let mut child = KillOnDrop(spawn_worker(
        &backend,
        &table,
        &[
            ("IDEM_MP_MODE", "crash".into()),
            ("IDEM_MP_KEY", key.into()),
            ("IDEM_MP_COALESCE", u8::from(coalesce).to_string()),
        ],
    ));
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    while !line.contains("IDEM-MP claimed") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the worker ended before claiming"
        );
    }
    let stale = db.only_token(&table).await;
    child.0.kill().unwrap(); // SIGKILL: no release, no cleanup.
    child.0.wait().unwrap();

    // Its lease (1s, renewed until the kill) still holds the key.
    let early = retry_after_crash(&db, key).await;
    assert!(
        matches!(early, Err(AppError::Idem(idem::Error::InProgress))),
        "{early:?}"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(retry_after_crash(&db, key).await.unwrap(), "retried");
    assert_eq!(retry_after_crash(&db, key).await.unwrap(), "retried");
    assert_eq!(db.effect_counts().await, vec![(key.to_owned(), 1)]);

    // The killed owner's completion, had it come late, is refused by the fence.
    let late = db
        .store
        .complete(
            &Key::new("mp.crash", key).unwrap(),
            Token::new(stale as u64),
            Output {
                outcome: idem::store::Outcome::Ok,
                bytes: vec![1, 2, 3].into(),
            },
            Duration::from_secs(60),
        )
        .await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    assert_eq!(retry_after_crash(&db, key).await.unwrap(), "retried");
    db.drop_tables(&table).await;
}

/// A worker that must not outlive a failing test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a skew worker with its clock moved by `offset` ("+2h", "-2h"); returns its output.
fn skewed_worker(backend: &Backend, table: &str, offset: &str, label: &str) -> String {
    let child = spawn_worker(
        backend,
        table,
        &[
            ("IDEM_MP_MODE", "skew".into()),
            ("IDEM_MP_KEY", "skewed".into()),
            ("IDEM_MP_LABEL", label.into()),
            ("LD_PRELOAD", LIBFAKETIME.into()),
            ("FAKETIME", offset.into()),
            ("DONT_FAKE_MONOTONIC", "1".into()),
        ],
    );
    let lines = lines_of(child);
    // The injection must have worked, or this test would prove nothing.
    let clock: i64 = lines[0].strip_prefix("clock ").unwrap().parse().unwrap();
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expected = if offset.starts_with('-') { -7200 } else { 7200 };
    assert!(
        (clock - real - expected).abs() < 60,
        "faketime did not move the worker's clock: {clock} vs {real}"
    );
    lines[1].strip_prefix("output ").unwrap().to_owned()
}

async fn skewed_app_clocks_agree_on_expiry(backend: Backend) {
    if !std::path::Path::new(LIBFAKETIME).exists() {
        if std::env::var("IDEM_REQUIRE_SERVERS").as_deref() == Ok("1") {
            panic!("{LIBFAKETIME} is missing (apt-get install libfaketime)");
        }
        let _ = writeln!(
            std::io::stderr(),
            "note: SKIPPED the clock-skew test: {LIBFAKETIME} is missing"
        );
        return;
    }
    let table = unique("idem_skew");
    let db = backend.connect(&table).await;
    // A process 2h behind records (TTL 3s by the database's clock) ...
    let recorded = Instant::now();
    assert_eq!(skewed_worker(&backend, &table, "-2h", "past"), "past");
    // ... and one 2h ahead still replays it: by its own clock it expired 2h ago.
    assert_eq!(skewed_worker(&backend, &table, "+2h", "future"), "past");
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(recorded.elapsed())).await;
    // 3s later, by the database's clock, it has expired for both.
    assert_eq!(skewed_worker(&backend, &table, "+2h", "future"), "future");
    let recorded = Instant::now();
    assert_eq!(skewed_worker(&backend, &table, "-2h", "past"), "future");
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(recorded.elapsed())).await;
    // The process behind does not keep the record alive 2h longer than its TTL.
    assert_eq!(
        skewed_worker(&backend, &table, "-2h", "past again"),
        "past again"
    );
    db.drop_tables(&table).await;
}

macro_rules! per_backend {
    ($($name:ident: $scenario:ident;)*) => {
        mod sqlite {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $scenario(Backend::sqlite()).await;
            })*
        }
        per_server!($($name: $scenario;)*);
    };
}

/// Scenarios for the database servers only. (SQLite runs inside each process, so its
/// clock is the host's: processes sharing one SQLite file share one clock.)
macro_rules! per_server {
    ($($name:ident: $scenario:ident;)*) => {
        mod postgres {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(backend) = Backend::postgres() {
                    $scenario(backend).await;
                }
            })*
        }
        mod mysql {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(backend) = Backend::mysql() {
                    $scenario(backend).await;
                }
            })*
        }
    };
}

per_backend! {
    processes_race_exactly_once: processes_race_on_the_same_keys;
    killed_owner_recovers: a_killed_owner_is_recovered_after_its_lease;
    coalesced_processes_race_exactly_once: coalesced_processes_race_on_the_same_keys;
    coalesced_killed_owner_recovers: a_coalesced_killed_owner_is_recovered_after_its_lease;
}

mod skew {
    use super::*;
    per_server! {
        skewed_clocks_agree: skewed_app_clocks_agree_on_expiry;
    }
}
