//! A NATS JetStream consumer whose handler is an ordinary `#[idempotent]` function: one
//! effect row per event id, however often the server delivers the event.
//!
//! `cargo run --example consumer_nats --features sqlite,postgres` — the effects and the
//! records in an SQLite file; with `DATABASE_URL=postgres://postgres@127.0.0.1/test`, on
//! PostgreSQL (add `MODE=tx` to write the effect and the record in one transaction).
//! The server is at `NATS_URL` (default `nats://127.0.0.1:4222`, JetStream enabled), the
//! stream `STREAM` (default `PAYMENTS`); `PUBLISH=n` (default 200) publishes n demo events
//! first, each twice, some of them failing (see `examples/consumer/handler.rs`), `PUBLISH=0`
//! none. `PREFETCH`, `BATCH`, `MAX_DELIVERIES`, `TABLE` and `WORKER`: see `Settings` there;
//! `ACK_WAIT` (seconds): see `examples/consumer/nats.rs`. Run several at once to share the
//! durable consumer; Ctrl-C stops one after it has acked what it handles.
//!
//! `BATCH=16` pulls 16 messages at a time and handles them together: their claims in one
//! statement, their effects concurrently, their records in one statement
//! (`Idempotent::run_batch`), with `PREFETCH / BATCH` batches in flight.
//!
//! It prints what it did every second: bodies executed, deliveries replayed from the record,
//! naked (a retryable error) and dead-lettered to `<STREAM>_dead` (a permanent error, or the
//! last of `MAX_DELIVERIES`).

#[path = "consumer/handler.rs"]
mod handler;
#[path = "consumer/nats.rs"]
mod nats;

use handler::{Handler, Settings, demo_events, reporting};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let name = std::env::var("STREAM").unwrap_or_else(|_| "PAYMENTS".into());
    let publish: usize = std::env::var("PUBLISH").map_or(Ok(200), |n| n.parse())?;

    let handler = Arc::new(Handler::connect(&settings).await?);
    let js = nats::connect(&url).await?;
    nats::declare(
        &js,
        &name,
        settings.max_deliveries,
        nats::ack_wait_from_env(),
    )
    .await?;
    if publish > 0 {
        // The producer publishes every event twice, as a producer that retries after a lost
        // ack does.
        let events = demo_events(publish);
        nats::publish(&js, &name, &events).await?;
        nats::publish(&js, &name, &events).await?;
        println!("published {publish} events, each twice, to {name}");
    }

    reporting(
        &handler,
        nats::consume(&url, &name, handler.clone(), &settings, handler::ctrl_c()),
    )
    .await?;
    Ok(())
}
