//! The RabbitMQ side of `examples/consumer_rabbitmq.rs` (lapin), shared with
//! `tests/consumer_rabbitmq.rs`: the queues, publishing, and the consumer loop.
//!
//! The queue is a quorum queue with `x-delivery-limit` and a dead-letter exchange: the broker
//! counts the deliveries of each message (a nack with requeue, a consumer that died with it
//! unacked) and moves one past the limit to `<queue>.dead` — RabbitMQ's own mechanism, so it
//! holds across consumer crashes and shows up in the management UI as users expect, where
//! counting attempts in the consumer would be lost with the consumer.

use crate::handler::{Event, Handler, Settings, Stats};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::Arc;

/// The queue dead letters of `queue` go to.
pub(crate) fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Connects and opens a channel.
pub(crate) async fn channel(url: &str) -> Result<(Connection, Channel), lapin::Error> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// Declares `queue` (quorum, durable) and its dead-letter queue: a message delivered
/// `max_deliveries` times without an ack goes to the dead letters instead of back to the queue.
pub(crate) async fn declare(
    channel: &Channel,
    queue: &str,
    max_deliveries: u16,
) -> Result<(), lapin::Error> {
    let dead = dead_letter_queue(queue);
    let durable = QueueDeclareOptions::durable();
    channel
        .queue_declare(dead.as_str().into(), durable, FieldTable::default())
        .await?;
    let mut arguments = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    arguments.insert("x-queue-type".into(), text("quorum"));
    // The limit counts returns: the first delivery plus `limit` redeliveries.
    arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(i32::from(max_deliveries) - 1),
    );
    arguments.insert("x-dead-letter-exchange".into(), text(""));
    arguments.insert("x-dead-letter-routing-key".into(), text(&dead));
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await?;
    Ok(())
}

/// Publishes `events` to `queue` as persistent JSON messages, and waits for the broker's
/// confirms.
pub(crate) async fn publish(
    channel: &Channel,
    queue: &str,
    events: &[Event],
) -> Result<(), Box<dyn std::error::Error>> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut confirms = Vec::with_capacity(events.len());
    for event in events {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(event)?,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(event.event_id.as_str().into()),
            )
            .await?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            return Err("the broker refused a message".into());
        }
    }
    Ok(())
}

/// Declares `queue` as [`declare`] does and consumes it until `shutdown` completes (then
/// finishes the messages in flight) or the connection fails. Up to `settings.prefetch`
/// messages are in flight, each handled on its own task.
pub(crate) async fn consume(
    url: &str,
    queue: &str,
    handler: Arc<Handler>,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (connection, channel) = channel(url).await?;
    declare(&channel, queue, settings.max_deliveries).await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("idem-consumer-{}", std::process::id());
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut cancelled = false;
    loop {
        tokio::select! {
            // Stop new deliveries; the stream still yields those already sent to this
            // consumer, then ends: each is handled and acked (or nacked) before closing.
            () = &mut shutdown, if !cancelled => {
                channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await?;
                cancelled = true;
            }
            delivery = deliveries.next() => match delivery {
                Some(delivery) => {
                    in_flight.spawn(handle(handler.clone(), delivery?));
                }
                None => break,
            },
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => done??,
        }
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    channel.close(200, "shutdown".into()).await?;
    connection.close(200, "shutdown".into()).await?;
    Ok(())
}

/// One delivery: run the handler, then tell the broker. Ack after it returns `Ok` — a replay
/// included: the event was handled, by this delivery or an earlier one. On a retryable error
/// nack with requeue, and the broker redelivers (up to its delivery limit); on a permanent one
/// reject without requeue: straight to the dead letters.
async fn handle(
    handler: Arc<Handler>,
    delivery: lapin::message::Delivery,
) -> Result<(), lapin::Error> {
    let Ok(event) = serde_json::from_slice::<Event>(&delivery.data) else {
        // Unreadable: no redelivery can change that.
        Stats::add(&handler.stats.dead_lettered);
        return delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .map(drop);
    };
    match handler.handle(&event, !delivery.redelivered).await {
        Ok(_) => delivery.ack(BasicAckOptions::default()).await.map(drop),
        Err(e) if e.is_permanent() => {
            eprintln!("{}: {e}: dead-lettered", event.event_id);
            Stats::add(&handler.stats.dead_lettered);
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map(drop)
        }
        Err(_) => {
            Stats::add(&handler.stats.requeued);
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            delivery.nack(requeue).await.map(drop)
        }
    }
}
