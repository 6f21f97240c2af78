//! The scenario of the broker tests (`consumer_rabbitmq.rs`, `consumer_nats.rs`), written
//! once: 2,000 events each published twice, 10% failing their first delivery, a few poison
//! events, two consumer processes on one queue, one of them killed mid-stream and started
//! again. Each test supplies its [`Broker`] and an ignored `consumer_worker` test that runs
//! the example's consumer loop (the worker processes are that test binary, started again).
//!
//! Included by those two tests only (`#[path]`), not from `support/mod.rs`: it uses the
//! examples' handler module, which they include as `crate::handler`.

use crate::handler::{Demo, Event, Handler, Settings};
use crate::support::sql::unique;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant};

/// Events that can be handled, and poison ones of each kind.
const EVENTS: usize = 2000;
const ALWAYS_FAIL: usize = 3;
const INVALID: usize = 2;
/// Messages a worker has in flight.
const PREFETCH: usize = 32;
/// Messages a worker handles at a time in [`Mode::BatchKill`]: two batches in flight.
const BATCH: usize = 16;

/// A message dead-lettered by the broker (or, on NATS, by the consumer on its last delivery).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DeadLetter {
    pub(crate) event_id: String,
    /// After the last allowed delivery (`true`), or rejected at once as permanent.
    pub(crate) exhausted: bool,
}

/// A queue (or stream) on a real broker, as the scenario needs it.
pub(crate) trait Broker {
    /// Its settings for a worker process (URL, queue name, ...).
    fn worker_env(&self) -> Vec<(&'static str, String)>;
    /// Publishes `events` in this order and waits until the broker has them.
    async fn publish(&self, events: &[Event]);
    /// Messages waiting for a consumer. (Those a consumer holds unacked come back to wait
    /// when it stops.)
    async fn pending(&self) -> u64;
    /// How many messages the dead letters hold.
    async fn dead_letter_count(&self) -> u64;
    /// The dead-lettered messages.
    async fn dead_letters(&self) -> Vec<DeadLetter>;
    /// Deletes the queues.
    async fn delete(&self);
}

/// How the consumer process is stopped mid-stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Mode {
    /// Plain mode; worker `a` is SIGKILLed after 700 effects, at whatever point each of its
    /// messages is.
    PlainKill,
    /// The same, with the workers handling [`BATCH`] messages at a time (NATS).
    BatchKill,
    /// Transactional mode; worker `a` aborts right after the commit of one event, before
    /// its ack.
    TxCrashAfterCommit,
}

/// The event the transactional run's worker `a` crashes after (neither failing nor poison).
const CRASH_EVENT: usize = 501;

fn event_id(i: usize) -> String {
    format!("evt-{i:04}")
}

/// The events: 10% fail their first delivery, then the poison ones.
fn events() -> Vec<Event> {
    let mut events: Vec<Event> = (0..EVENTS)
        .map(|i| Event {
            event_id: event_id(i),
            amount_cents: 100 + i as i64,
            demo: if i % 10 == 3 {
                Demo::FailFirstDelivery
            } else {
                Demo::Ok
            },
        })
        .collect();
    for (n, demo) in [(ALWAYS_FAIL, Demo::AlwaysFail), (INVALID, Demo::Invalid)] {
        for _ in 0..n {
            let i = events.len();
            events.push(Event {
                event_id: format!("poison-{i:04}"),
                amount_cents: 1,
                demo,
            });
        }
    }
    events
}

/// Every event twice: each first copy followed by a second copy of another event (a
/// permutation), so some duplicates arrive together and others far apart.
fn messages(events: &[Event]) -> Vec<Event> {
    let n = events.len();
    assert_ne!(
        n % 7919,
        0,
        "7919 is prime: i -> 7919 i mod n permutes 0..n"
    );
    (0..n)
        .flat_map(|i| [events[i].clone(), events[i * 7919 % n].clone()])
        .collect()
}

/// A consumer process: this test binary's `consumer_worker`.
struct Worker {
    name: &'static str,
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(name: &'static str, env: &[(&'static str, String)]) -> Worker {
        let mut command = crate::support::worker_command("consumer_worker");
        command
            .env("IDEM_CONSUMER_WORKER", name)
            .env("WORKER", name)
            .stdin(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        // Connected to the database: from here on it consumes.
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        while !line.contains("IDEM-CONSUMER ready") {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "worker {name} ended before it was ready"
            );
        }
        Worker {
            name,
            child,
            stdout,
        }
    }

    /// SIGKILL.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for it to end by itself (the crash drill), up to `limit`.
    fn crashed(mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    !status.success(),
                    "worker {} ended without crashing",
                    self.name
                );
                return;
            }
            assert!(
                start.elapsed() < limit,
                "worker {} did not crash",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes its stdin: it stops taking messages, acks those it holds and exits.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        // Its last words (what it did) go to the terminal, with the test's output.
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        print!("worker {}: {rest}", self.name);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "worker {} failed: {status}", self.name);
    }
}

impl Drop for Worker {
    /// A test that fails midway leaves no worker running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of each broker test's ignored `consumer_worker` test: with
/// `IDEM_CONSUMER_WORKER` set, connects the handler, says `ready`, and runs `consume` until
/// stdin closes.
pub(crate) fn worker<F, Fut>(consume: F)
where
    F: FnOnce(std::sync::Arc<Handler>, Settings, tokio::sync::oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    if std::env::var("IDEM_CONSUMER_WORKER").is_err() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let settings = Settings::from_env();
        let handler = std::sync::Arc::new(Handler::connect(&settings).await.unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::stdin().read_line(&mut rest);
            let _ = stop.send(());
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "IDEM-CONSUMER ready").unwrap();
        out.flush().unwrap();
        drop(out);
        consume(handler.clone(), settings, stopped).await.unwrap();
        println!("IDEM-CONSUMER stopped: {}", handler.stats.line());
    });
}

/// The effect rows and records of one run, read from PostgreSQL.
struct Tables {
    pool: PgPool,
    table: String,
}

impl Tables {
    /// Effect rows: event id -> the workers that wrote one.
    async fn effects(&self) -> BTreeMap<String, Vec<String>> {
        let rows: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT event_id, worker FROM {}_effects ORDER BY id",
            self.table
        )))
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let mut effects: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (event, worker) in rows {
            effects.entry(event).or_default().push(worker);
        }
        effects
    }

    async fn count(&self, sql: String) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn events_with_effects(&self) -> i64 {
        let t = &self.table;
        self.count(format!("SELECT COUNT(DISTINCT event_id) FROM {t}_effects"))
            .await
    }

    async fn drop(&self) {
        for t in [format!("{}_effects", self.table), self.table.clone()] {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                .execute(&self.pool)
                .await
                .unwrap();
        }
    }
}

/// The scenario. Afterwards, counted in the database and on the broker: every event has its
/// effect (exactly one in transactional mode; see below for plain mode), every one a
/// completed record and nothing else is recorded, the queue is drained, and the dead letters
/// are exactly the poison events, each copy once. Prints the messages per second.
pub(crate) async fn scenario<B: Broker>(broker: &B, pg_url: &str, mode: Mode, label: &str) {
    let table = unique("idem_consumer");
    let transactional = mode == Mode::TxCrashAfterCommit;
    let mut env = broker.worker_env();
    env.extend([
        ("DATABASE_URL", pg_url.to_owned()),
        ("TABLE", table.clone()),
        (
            "MODE",
            if transactional { "tx" } else { "plain" }.to_owned(),
        ),
        ("PREFETCH", PREFETCH.to_string()),
        (
            "BATCH",
            if mode == Mode::BatchKill { BATCH } else { 0 }.to_string(),
        ),
        ("MAX_DELIVERIES", "5".to_owned()),
    ]);
    // The tables, created once before the workers race to create them.
    let settings = Settings {
        database_url: Some(pg_url.to_owned()),
        table: table.clone(),
        transactional,
        prefetch: PREFETCH as u16,
        batch: 0,
        max_deliveries: 5,
        worker: "test".into(),
        crash_after_commit: None,
    };
    drop(Handler::connect(&settings).await.unwrap());
    let tables = Tables {
        pool: PgPool::connect(pg_url).await.unwrap(),
        table,
    };

    let events = events();
    let poison: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_id.starts_with("poison"))
        .collect();
    let messages = messages(&events);
    broker.publish(&messages).await;

    let start = Instant::now();
    let (a, b) = match mode {
        Mode::PlainKill | Mode::BatchKill => {
            let a = Worker::spawn("a", &env);
            let b = Worker::spawn("b", &env);
            // Mid-stream: effects are being written, with both workers busy.
            while tables.events_with_effects().await < 700 {
                assert!(start.elapsed() < Duration::from_secs(60), "no progress");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            a.kill();
            (Worker::spawn("a2", &env), b)
        }
        Mode::TxCrashAfterCommit => {
            // Alone, so that it is the one that handles the crash event.
            let mut crash_env = env.clone();
            crash_env.push(("CRASH_AFTER_COMMIT", event_id(CRASH_EVENT)));
            let a = Worker::spawn("a", &crash_env);
            a.crashed(Duration::from_secs(60));
            // Killed after the commit, before the ack: the effect is there, by `a`.
            let effects = tables.effects().await;
            assert_eq!(
                effects.get(&event_id(CRASH_EVENT)),
                Some(&vec!["a".to_owned()])
            );
            (Worker::spawn("a2", &env), Worker::spawn("b", &env))
        }
    };

    // Drained: every event has its effect, every poison copy is dead-lettered, nothing waits.
    let expected_dead = 2 * poison.len() as u64;
    loop {
        let done = tables.events_with_effects().await == EVENTS as i64
            && broker.dead_letter_count().await == expected_dead
            && broker.pending().await == 0;
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "not drained after 90 s: {} events with effects, {} dead letters, {} pending",
            tables.events_with_effects().await,
            broker.dead_letter_count().await,
            broker.pending().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    a.stop();
    b.stop();
    assert_eq!(
        broker.pending().await,
        0,
        "the queue is drained, every message acked"
    );
    let rate = messages.len() as f64 / elapsed.as_secs_f64();
    let _ = writeln!(
        std::io::stderr(),
        "{label}: {} messages ({EVENTS} events + {} poison, each twice) drained in {:.2} s: \
         {rate:.0} msgs/s end to end",
        messages.len(),
        poison.len(),
        elapsed.as_secs_f64()
    );

    // The dead letters are exactly the poison events, both copies of each: those that
    // always fail after their last delivery, the invalid ones at once.
    let mut expected: Vec<DeadLetter> = poison
        .iter()
        .flat_map(|e| {
            let letter = || DeadLetter {
                event_id: e.event_id.clone(),
                exhausted: e.demo == Demo::AlwaysFail,
            };
            [letter(), letter()]
        })
        .collect();
    expected.sort();
    let mut dead = broker.dead_letters().await;
    dead.sort();
    assert_eq!(dead, expected);

    // Effects, counted in the database.
    let effects = tables.effects().await;
    for e in &poison {
        assert!(
            !effects.contains_key(&e.event_id),
            "{} had an effect",
            e.event_id
        );
    }
    assert_eq!(effects.len(), EVENTS, "every event has its effect");
    let twice: Vec<(&String, &Vec<String>)> = effects.iter().filter(|(_, w)| w.len() > 1).collect();
    if transactional {
        // The effect and the record commit together: exactly one effect per event, kill or
        // not. The crash event's is the one `a` committed: its redelivery replayed.
        assert!(twice.is_empty(), "effects written twice: {twice:?}");
        assert_eq!(effects[&event_id(CRASH_EVENT)], ["a"]);
    } else {
        // Plain mode: the effect and the record are two commits. A body the kill interrupted
        // between them runs again once the claim's lease runs out (README, Semantics): such
        // an event has a second row, the first one by the killed worker `a`. Only messages
        // `a` held when it died can: at most its prefetch. Every other event has one row.
        for (event, workers) in &twice {
            assert_eq!(workers.len(), 2, "{event} ran more than twice: {workers:?}");
            assert_eq!(
                workers[0], "a",
                "{event}: only a body the kill cut short runs again"
            );
        }
        assert!(twice.len() <= PREFETCH, "{} events ran twice", twice.len());
        let _ = writeln!(
            std::io::stderr(),
            "{label}: {} events ran again after the kill (their effect was written, their \
             record not)",
            twice.len()
        );
    }
    // Two processes shared the queue.
    let by = |w: &str| effects.values().flatten().filter(|x| *x == w).count();
    assert!(by("a") > 0 && by("b") > 0, "both workers handled events");

    // Every event has its completed record; nothing else is recorded (a failed or rejected
    // body leaves no record), and no claim is left behind.
    let t = &tables.table;
    assert_eq!(
        tables
            .count(format!("SELECT COUNT(*) FROM {t} WHERE state = 1"))
            .await,
        EVENTS as i64
    );
    assert_eq!(
        tables.count(format!("SELECT COUNT(*) FROM {t}")).await,
        EVENTS as i64
    );

    broker.delete().await;
    tables.drop().await;
}
