//! The RabbitMQ consumer of `examples/consumer_rabbitmq.rs` (its handler and loop, included
//! from `examples/consumer/`) against the real broker at `IDEM_TEST_RABBITMQ_URL` and
//! PostgreSQL at `IDEM_TEST_POSTGRES_URL`: 2,000 events each published twice, 10% nacked on
//! their first delivery, poison events dead-lettered, two consumer processes, one killed
//! mid-stream and started again (`support/consumer.rs`). Counted in the database and on the
//! broker afterwards.

#[path = "support/consumer.rs"]
mod consumer;
#[path = "../examples/consumer/handler.rs"]
mod handler;
#[path = "../examples/consumer/rabbitmq.rs"]
mod rabbitmq;
mod support;

use consumer::{Broker, DeadLetter, Mode};
use handler::Event;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use support::sql::{server_url, unique};

struct Rabbit {
    url: String,
    queue: String,
    _connection: Connection,
    channel: Channel,
}

impl Rabbit {
    /// A fresh queue and its dead-letter queue, or `None` (skipped) without a broker URL.
    async fn new() -> Option<Rabbit> {
        let url = server_url("IDEM_TEST_RABBITMQ_URL", "RabbitMQ")?;
        let (connection, channel) = rabbitmq::channel(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach RabbitMQ at {url}: {e}"));
        let queue = unique("idem_consumer");
        rabbitmq::declare(&channel, &queue, 5).await.unwrap();
        Some(Rabbit {
            url,
            queue,
            _connection: connection,
            channel,
        })
    }

    /// Messages ready in `queue` (a passive declare changes nothing).
    async fn ready(&self, queue: &str) -> u64 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap();
        u64::from(q.message_count())
    }
}

impl Broker for Rabbit {
    fn worker_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IDEM_TEST_RABBITMQ_URL", self.url.clone()),
            ("IDEM_TEST_QUEUE", self.queue.clone()),
        ]
    }

    async fn publish(&self, events: &[Event]) {
        rabbitmq::publish(&self.channel, &self.queue, events)
            .await
            .unwrap();
    }

    async fn pending(&self) -> u64 {
        self.ready(&self.queue).await
    }

    async fn dead_letter_count(&self) -> u64 {
        self.ready(&rabbitmq::dead_letter_queue(&self.queue)).await
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        let dead = rabbitmq::dead_letter_queue(&self.queue);
        let mut letters = Vec::new();
        let get = BasicGetOptions { no_ack: true };
        while let Some(message) = self
            .channel
            .basic_get(dead.as_str().into(), get)
            .await
            .unwrap()
        {
            let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
            // Why the broker dead-lettered it: `delivery_limit` after the last delivery,
            // `rejected` for a reject without requeue.
            let headers = message
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            let reason = match headers.inner().get("x-first-death-reason") {
                Some(AMQPValue::LongString(s)) => s.to_string(),
                other => panic!("{}: no death reason: {other:?}", event.event_id),
            };
            let exhausted = match reason.as_str() {
                "delivery_limit" => true,
                "rejected" => false,
                other => panic!("{}: dead-lettered for {other}", event.event_id),
            };
            letters.push(DeadLetter {
                event_id: event.event_id,
                exhausted,
            });
        }
        letters
    }

    async fn delete(&self) {
        for queue in [self.queue.clone(), rabbitmq::dead_letter_queue(&self.queue)] {
            self.channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    }
}

/// A worker process of the scenario: the example's consumer loop on the test's queue.
#[test]
#[ignore = "a worker process the consumer tests start"]
fn consumer_worker() {
    consumer::worker(|handler, settings, stop| async move {
        let url = std::env::var("IDEM_TEST_RABBITMQ_URL").unwrap();
        let queue = std::env::var("IDEM_TEST_QUEUE").unwrap();
        let stop = async {
            let _ = stop.await;
        };
        rabbitmq::consume(&url, &queue, handler, &settings, stop).await
    });
}

async fn run(mode: Mode, label: &str) {
    let Some(pg) = server_url("IDEM_TEST_POSTGRES_URL", "PostgreSQL") else {
        return;
    };
    let Some(rabbit) = Rabbit::new().await else {
        return;
    };
    consumer::scenario(&rabbit, &pg, mode, label).await;
}

/// Plain mode, one consumer SIGKILLed mid-stream: every event has its effect, and only
/// bodies the kill cut short between their effect and their record ran again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mode_two_consumers_one_killed() {
    run(Mode::PlainKill, "rabbitmq plain").await;
}

/// Transactional mode, a consumer killed between its commit and its ack: exactly one effect
/// per event; the redelivery replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_mode_killed_between_commit_and_ack() {
    run(Mode::TxCrashAfterCommit, "rabbitmq tx").await;
}
