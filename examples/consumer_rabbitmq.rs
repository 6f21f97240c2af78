//! A RabbitMQ consumer whose handler is an ordinary `#[idempotent]` function: one effect row
//! per event id, however often the broker delivers the event.
//!
//! `cargo run --example consumer_rabbitmq --features sqlite,postgres` — the effects and the
//! records in an SQLite file; with `DATABASE_URL=postgres://postgres@127.0.0.1/test`, on
//! PostgreSQL (add `MODE=tx` to write the effect and the record in one transaction).
//! The broker is at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`), the queue
//! `QUEUE` (default `payments`); `PUBLISH=n` (default 200) publishes n demo events first, each
//! twice, some of them failing (see `examples/consumer/handler.rs`), `PUBLISH=0` none.
//! `PREFETCH`, `MAX_DELIVERIES`, `TABLE` and `WORKER`: see `Settings` there. Run several at
//! once to share the queue; Ctrl-C stops one after it has acked what it holds.
//!
//! It prints what it did every second: bodies executed, deliveries replayed from the record,
//! requeued (a retryable error) and dead-lettered (a permanent error); the broker
//! dead-letters the messages that exceed `MAX_DELIVERIES` to `<QUEUE>.dead`.

#[path = "consumer/handler.rs"]
mod handler;
#[path = "consumer/rabbitmq.rs"]
mod rabbitmq;

use handler::{Handler, Settings, demo_events, reporting};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let queue = std::env::var("QUEUE").unwrap_or_else(|_| "payments".into());
    let publish: usize = std::env::var("PUBLISH").map_or(Ok(200), |n| n.parse())?;

    let handler = Arc::new(Handler::connect(&settings).await?);
    let (connection, channel) = rabbitmq::channel(&url).await?;
    rabbitmq::declare(&channel, &queue, settings.max_deliveries).await?;
    if publish > 0 {
        // The producer publishes every event twice, as a producer that retries after a lost
        // confirm does.
        let events = demo_events(publish);
        rabbitmq::publish(&channel, &queue, &events).await?;
        rabbitmq::publish(&channel, &queue, &events).await?;
        println!("published {publish} events, each twice, to {queue}");
    }
    connection.close(200, "published".into()).await?;

    reporting(
        &handler,
        rabbitmq::consume(&url, &queue, handler.clone(), &settings, handler::ctrl_c()),
    )
    .await?;
    Ok(())
}
