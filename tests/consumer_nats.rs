//! The NATS JetStream consumer of `examples/consumer_nats.rs` (its handler and loop, included
//! from `examples/consumer/`) against the real server at `IDEM_TEST_NATS_URL` and PostgreSQL
//! at `IDEM_TEST_POSTGRES_URL`: 2,000 events each published twice, 10% naked on their first
//! delivery, poison events dead-lettered, two consumer processes, one killed mid-stream and
//! started again (`support/consumer.rs`). Counted in the database and on the server
//! afterwards.

#[path = "support/consumer.rs"]
mod consumer;
#[path = "../examples/consumer/handler.rs"]
mod handler;
#[path = "../examples/consumer/nats.rs"]
mod nats;
mod support;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::PullConsumer;
use consumer::{Broker, DeadLetter, Mode};
use handler::Event;
use std::time::Duration;
use support::sql::{server_url, unique};

/// The server redelivers what a killed worker held after this long.
const ACK_WAIT: Duration = Duration::from_secs(2);

struct Nats {
    url: String,
    name: String,
    js: Context,
    consumer: PullConsumer,
}

impl Nats {
    /// A fresh stream, its dead-letter stream and the durable consumer, or `None` (skipped)
    /// without a server URL.
    async fn new() -> Option<Nats> {
        let url = server_url("IDEM_TEST_NATS_URL", "NATS")?;
        let js = nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach NATS at {url}: {e}"));
        let name = unique("idem_consumer");
        let consumer = nats::declare(&js, &name, 5, ACK_WAIT).await.unwrap();
        Some(Nats {
            url,
            name,
            js,
            consumer,
        })
    }
}

impl Broker for Nats {
    fn worker_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IDEM_TEST_NATS_URL", self.url.clone()),
            ("IDEM_TEST_STREAM", self.name.clone()),
            ("ACK_WAIT", ACK_WAIT.as_secs().to_string()),
        ]
    }

    async fn publish(&self, events: &[Event]) {
        nats::publish(&self.js, &self.name, events).await.unwrap();
    }

    /// Not delivered yet, or delivered and not acked: JetStream counts both.
    async fn pending(&self) -> u64 {
        let mut consumer = self.consumer.clone();
        let info = consumer.info().await.unwrap();
        info.num_pending + info.num_ack_pending as u64
    }

    async fn dead_letter_count(&self) -> u64 {
        let name = nats::dead_letter_stream(&self.name);
        let mut stream = self.js.get_stream(&name).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        let name = nats::dead_letter_stream(&self.name);
        let mut stream = self.js.get_stream(&name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut letters = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(sequence).await.unwrap();
            let event: Event = serde_json::from_slice(&message.payload).unwrap();
            let reason = message
                .headers
                .get(nats::DEAD_REASON)
                .map(|v| v.to_string());
            let exhausted = match reason.as_deref() {
                Some("max_deliver") => true,
                Some("permanent") => false,
                other => panic!("{}: dead-lettered for {other:?}", event.event_id),
            };
            letters.push(DeadLetter {
                event_id: event.event_id,
                exhausted,
            });
        }
        letters
    }

    async fn delete(&self) {
        for name in [self.name.clone(), nats::dead_letter_stream(&self.name)] {
            self.js.delete_stream(&name).await.unwrap();
        }
    }
}

/// A worker process of the scenario: the example's consumer loop on the test's stream.
#[test]
#[ignore = "a worker process the consumer tests start"]
fn consumer_worker() {
    consumer::worker(|handler, settings, stop| async move {
        let url = std::env::var("IDEM_TEST_NATS_URL").unwrap();
        let name = std::env::var("IDEM_TEST_STREAM").unwrap();
        let stop = async {
            let _ = stop.await;
        };
        nats::consume(&url, &name, handler, &settings, stop).await
    });
}

async fn run(mode: Mode, label: &str) {
    let Some(pg) = server_url("IDEM_TEST_POSTGRES_URL", "PostgreSQL") else {
        return;
    };
    let Some(nats) = Nats::new().await else {
        return;
    };
    consumer::scenario(&nats, &pg, mode, label).await;
}

/// Plain mode, one consumer SIGKILLed mid-stream: every event has its effect, and only
/// bodies the kill cut short between their effect and their record ran again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mode_two_consumers_one_killed() {
    run(Mode::PlainKill, "nats plain").await;
}

/// Plain mode a batch at a time (`BATCH`, `Idempotent::run_batch`), one consumer SIGKILLed
/// mid-stream: the same counts as one message at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_two_consumers_one_killed() {
    run(Mode::BatchKill, "nats batch").await;
}

/// Transactional mode, a consumer killed between its commit and its ack: exactly one effect
/// per event; the redelivery replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_mode_killed_between_commit_and_ack() {
    run(Mode::TxCrashAfterCommit, "nats tx").await;
}

/// The batch handler (`Handler::handle_batch`, on `run_batch`) and the one-message handler
/// (`#[idempotent]`) share their records: each replays what the other recorded, a duplicate
/// inside a batch replays its twin, another payload under a recorded id is refused, and
/// every body ran once. On SQLite: no broker, no server.
#[tokio::test]
async fn batches_and_single_deliveries_share_records() {
    let file = std::env::temp_dir().join(format!("{}.sqlite", unique("idem_consumer_batch")));
    let settings = handler::Settings {
        database_url: Some(format!("sqlite://{}?mode=rwc", file.display())),
        table: "shared".into(),
        transactional: false,
        prefetch: 8,
        batch: 4,
        max_deliveries: 5,
        worker: "test".into(),
        crash_after_commit: None,
    };
    let handler = handler::Handler::connect(&settings).await.unwrap();
    let event = |i: i64| Event {
        event_id: format!("evt-{i}"),
        amount_cents: 100 + i,
        demo: handler::Demo::Ok,
    };
    let handler = &handler;
    let single = |i| async move { handler.handle(&event(i), true).await.unwrap() };
    let (first, second) = (single(0).await, single(1).await);
    assert!(!first.was_replayed() && !second.was_replayed());

    let batch = [event(0), event(1), event(2), event(3), event(2)].map(|e| (e, true));
    let results: Vec<_> = handler
        .handle_batch(&batch)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let replayed: Vec<bool> = results.iter().map(|r| r.was_replayed()).collect();
    assert_eq!(replayed, [true, true, false, false, true]);
    assert_eq!(
        *results[0], *first,
        "the batch replays the single delivery's effect"
    );
    assert_eq!(*results[1], *second);
    assert_eq!(*results[4], *results[2], "the duplicate replays its twin");

    let again = single(3).await;
    assert!(
        again.was_replayed(),
        "a single delivery replays the batch's record"
    );
    assert_eq!(*again, *results[3]);

    let mut changed = event(2);
    changed.amount_cents += 1;
    let refused = handler.handle_batch(&[(changed, true)]).await.remove(0);
    match refused {
        Err(handler::HandlerError::Idem(idem::Error::PayloadMismatch)) => {}
        other => panic!("expected a payload mismatch, got {other:?}"),
    }
    assert_eq!(
        handler
            .stats
            .executed
            .load(std::sync::atomic::Ordering::Relaxed),
        4,
        "one body per event"
    );
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
}

/// More events at once than async-nats lets a context have acks outstanding (5,000): every
/// one is published. (Before the example's `publish` awaited its acks on the way, the
/// 5,001st publish waited forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_more_events_than_acks_may_be_outstanding() {
    let Some(nats) = Nats::new().await else {
        return;
    };
    let events: Vec<Event> = (0..6_000)
        .map(|i| Event {
            event_id: format!("evt-{i}"),
            amount_cents: i,
            demo: handler::Demo::Ok,
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(20), nats.publish(&events))
        .await
        .expect("published within 20 s");
    assert_eq!(nats.pending().await, 6_000);
    nats.delete().await;
}
