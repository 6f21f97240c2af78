//! The NATS JetStream side of `examples/consumer_nats.rs` (async-nats), shared with
//! `tests/consumer_nats.rs`: the streams, publishing, and the pull consumer loop.
//!
//! Events go to the work-queue stream `<name>` (subject `<name>.events`), read by the durable
//! pull consumer `workers` with explicit acks and `max_deliver`. JetStream has no dead-letter
//! queue of its own: a message past `max_deliver` only stays in the stream, with an advisory.
//! So, as NATS users do, the consumer dead-letters it itself: on a permanent error, or on the
//! last allowed delivery, it publishes the message to the stream `<name>_dead` (subject
//! `<name>.dead`, with the reason in a header) and then `term`s it. The dead-letter publish
//! carries a message id, so a consumer killed between the two publishes it once even though
//! the redelivery does it again (JetStream drops the duplicate within its window).

use crate::handler::{Event, Handler, HandlerError, Settings, Stats};
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, RetentionPolicy};
use async_nats::jetstream::{self, AckKind, Context};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// The durable consumer every worker process shares.
const CONSUMER: &str = "workers";
/// The header that says why a message was dead-lettered: `max_deliver` or `permanent`.
pub(crate) const DEAD_REASON: &str = "Idem-Dead-Reason";

/// The subject events are published to.
pub(crate) fn subject(name: &str) -> String {
    format!("{name}.events")
}

/// The stream dead letters go to.
pub(crate) fn dead_letter_stream(name: &str) -> String {
    format!("{name}_dead")
}

/// How long the server waits for an ack before it redelivers: `ACK_WAIT` seconds [30]. While
/// the handler runs, the consumer tells the server it is still working every third of it.
pub(crate) fn ack_wait_from_env() -> Duration {
    let seconds = std::env::var("ACK_WAIT").map_or(30, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("ACK_WAIT is seconds, not {s:?}"))
    });
    Duration::from_secs(seconds)
}

/// Connects to the server at `url`.
pub(crate) async fn connect(url: &str) -> Result<Context, async_nats::ConnectError> {
    Ok(jetstream::new(async_nats::connect(url).await?))
}

/// Creates the stream `name`, its dead-letter stream and the durable pull consumer, if
/// missing: a message is delivered at most `max_deliveries` times, again after `ack_wait`
/// without an ack.
pub(crate) async fn declare(
    js: &Context,
    name: &str,
    max_deliveries: u16,
    ack_wait: Duration,
) -> Result<PullConsumer, Box<dyn std::error::Error>> {
    js.get_or_create_stream(stream::Config {
        name: dead_letter_stream(name),
        subjects: vec![format!("{name}.dead")],
        ..Default::default()
    })
    .await?;
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subject(name)],
            retention: RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: AckPolicy::Explicit,
                ack_wait,
                max_deliver: i64::from(max_deliveries),
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

/// Publishes `events` to the stream `name` as JSON, and waits for the server's acks.
pub(crate) async fn publish(
    js: &Context,
    name: &str,
    events: &[Event],
) -> Result<(), Box<dyn std::error::Error>> {
    // A publish waits while the context has 5,000 acks outstanding (async-nats'
    // `max_ack_inflight`), and an ack stays outstanding until it is awaited: so await the
    // oldest ones on the way, not all of them at the end.
    const IN_FLIGHT: usize = 1_000;
    let mut acks = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for event in events {
        if acks.len() == IN_FLIGHT
            && let Some(ack) = acks.pop_front()
        {
            ack.await?;
        }
        // No message id: the second copy of an event is a second message, as a producer
        // that publishes again after a lost ack makes one outside the duplicate window.
        acks.push_back(
            js.publish(subject(name), serde_json::to_vec(event)?.into())
                .await?,
        );
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Declares the stream `name` as [`declare`] does and consumes it until `shutdown` completes
/// (then finishes the messages in flight; those fetched but not started yet are redelivered
/// after the ack wait) or the connection fails. Up to `settings.prefetch` messages are in
/// flight, each handled on its own task.
pub(crate) async fn consume(
    url: &str,
    name: &str,
    handler: Arc<Handler>,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error>> {
    let js = connect(url).await?;
    let ack_wait = ack_wait_from_env();
    let consumer = declare(&js, name, settings.max_deliveries, ack_wait).await?;
    if settings.batch > 0 {
        return consume_batches(consumer, name, handler, settings, ack_wait, shutdown).await;
    }
    let prefetch = usize::from(settings.prefetch);
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(prefetch)
        .messages()
        .await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(prefetch));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot first: at most `prefetch` messages are handled at once.
        let slot = slots.clone().acquire_owned().await?;
        let message = tokio::select! {
            () = &mut shutdown => break,
            message = messages.next() => match message {
                Some(Ok(message)) => message,
                // The client reconnects by itself; the pull resumes.
                Some(Err(e)) => {
                    eprintln!("pull: {e}");
                    continue;
                }
                None => break,
            },
        };
        let (handler, name, max) = (handler.clone(), name.to_owned(), settings.max_deliveries);
        in_flight.spawn(async move {
            let done = handle(&handler, &name, max, ack_wait, message).await;
            drop(slot);
            done
        });
        while let Some(done) = in_flight.try_join_next() {
            done?.map_err(|e| e as Box<dyn std::error::Error>)?;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        done?.map_err(|e| e as Box<dyn std::error::Error>)?;
    }
    Ok(())
}

/// One message: run the handler, then tell the server ([`settle`]).
async fn handle(
    handler: &Handler,
    name: &str,
    max_deliveries: u16,
    ack_wait: Duration,
    message: jetstream::Message,
) -> Result<(), async_nats::Error> {
    let delivered = message.info()?.delivered;
    let outcome = match serde_json::from_slice::<Event>(&message.payload) {
        Ok(event) => {
            // Keep the message ours while the handler runs: it may wait out the lease of a
            // claim whose owner died, which can take longer than the ack wait.
            let handled = handler.handle(&event, delivered == 1);
            in_progress(&[&message], ack_wait, handled).await.map(drop)
        }
        // Unreadable: no redelivery can change that.
        Err(_) => Err(HandlerError::Invalid),
    };
    settle(handler, name, max_deliveries, &message, outcome).await
}

/// `work`, while the server is told every third of `ack_wait` that `messages` are still
/// being worked on (so that it does not redeliver them meanwhile).
async fn in_progress<T>(
    messages: &[&jetstream::Message],
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    let progress = async {
        loop {
            tokio::time::sleep(ack_wait / 3).await;
            for message in messages {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    };
    tokio::select! {
        done = work => done,
        never = progress => never,
    }
}

/// Tells the server what became of a message. Ack after the handler returned `Ok` — a
/// replay included. On a retryable error nak (the server redelivers), except on the last
/// allowed delivery; then, or on a permanent error, dead-letter it and `term`.
async fn settle(
    handler: &Handler,
    name: &str,
    max_deliveries: u16,
    message: &jetstream::Message,
    outcome: Result<(), HandlerError>,
) -> Result<(), async_nats::Error> {
    let info = message.info()?;
    let (delivered, sequence) = (info.delivered, info.stream_sequence);
    let reason = match outcome {
        Ok(()) => return message.ack().await,
        Err(e) if e.is_permanent() => "permanent",
        Err(_) if delivered >= i64::from(max_deliveries) => "max_deliver",
        Err(_) => {
            Stats::add(&handler.stats.requeued);
            return message.ack_with(AckKind::Nak(None)).await;
        }
    };
    let dead = PublishMessage::build()
        .payload(message.payload.clone())
        .header(DEAD_REASON, reason)
        .message_id(format!("{name}-{sequence}"));
    message
        .context
        .send_publish(format!("{name}.dead"), dead)
        .await?
        .await?;
    Stats::add(&handler.stats.dead_lettered);
    message.ack_with(AckKind::Term).await
}

// ---------------------------------------------------------------------------------------
// A batch at a time (`BATCH`)

/// How long a pull waits for its batch to fill: a partial batch is handled after this.
const LINGER: Duration = Duration::from_millis(50);

/// [`consume`] a batch at a time: `prefetch / batch` pipelines (tasks), each pulling up to
/// `batch` messages and handling them together ([`Handler::handle_batch`]), until
/// `shutdown` completes (each pipeline finishes the batch it is handling; a pull cut short
/// is redelivered after the ack wait) or a pipeline fails.
async fn consume_batches(
    consumer: PullConsumer,
    name: &str,
    handler: Arc<Handler>,
    settings: &Settings,
    ack_wait: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error>> {
    let size = usize::from(settings.batch);
    let pipelines = (usize::from(settings.prefetch) / size).max(1);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..pipelines {
        let (consumer, handler, name) = (consumer.clone(), handler.clone(), name.to_owned());
        let max = settings.max_deliveries;
        let stopped = stopped.clone();
        running.spawn(async move {
            pipeline(consumer, &handler, &name, (size, max, ack_wait), stopped).await
        });
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let failed = tokio::select! {
        () = &mut shutdown => None,
        Some(done) = running.join_next() => Some(done),
    };
    let _ = stop.send(true);
    for done in failed
        .into_iter()
        .chain(running.join_all().await.into_iter().map(Ok))
    {
        done?.map_err(|e| e as Box<dyn std::error::Error>)?;
    }
    Ok(())
}

/// One pipeline of [`consume_batches`]: pull a batch, handle it, tell the server about each
/// message, again, until `stopped` says so.
async fn pipeline(
    consumer: PullConsumer,
    handler: &Handler,
    name: &str,
    (size, max_deliveries, ack_wait): (usize, u16, Duration),
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(), async_nats::Error> {
    while !*stopped.borrow() {
        let pull = async {
            let mut messages = Vec::with_capacity(size);
            match consumer
                .batch()
                .max_messages(size)
                .expires(LINGER)
                .messages()
                .await
            {
                Ok(mut batch) => {
                    while let Some(message) = batch.next().await {
                        match message {
                            Ok(message) => messages.push(message),
                            Err(e) => eprintln!("pull: {e}"),
                        }
                    }
                }
                // The client reconnects by itself; the next pull resumes.
                Err(e) => {
                    eprintln!("pull: {e}");
                    tokio::time::sleep(LINGER).await;
                }
            }
            messages
        };
        let messages = tokio::select! {
            _ = stopped.changed() => break,
            messages = pull => messages,
        };
        if !messages.is_empty() {
            handle_batch(handler, name, max_deliveries, ack_wait, messages).await?;
        }
    }
    Ok(())
}

/// A batch of messages: the handler takes the readable ones together, then the server is
/// told about each ([`settle`]).
async fn handle_batch(
    handler: &Handler,
    name: &str,
    max_deliveries: u16,
    ack_wait: Duration,
    messages: Vec<jetstream::Message>,
) -> Result<(), async_nats::Error> {
    let mut outcomes: Vec<Option<Result<(), HandlerError>>> = Vec::with_capacity(messages.len());
    let (mut deliveries, mut readable) = (Vec::new(), Vec::new());
    for (i, message) in messages.iter().enumerate() {
        let delivered = message.info()?.delivered;
        outcomes.push(match serde_json::from_slice::<Event>(&message.payload) {
            Ok(event) => {
                deliveries.push((event, delivered == 1));
                readable.push(i);
                None
            }
            Err(_) => Some(Err(HandlerError::Invalid)),
        });
    }
    let held: Vec<&jetstream::Message> = messages.iter().collect();
    let handled = in_progress(&held, ack_wait, handler.handle_batch(&deliveries)).await;
    for (i, result) in readable.into_iter().zip(handled) {
        outcomes[i] = Some(result.map(drop));
    }
    for (message, outcome) in messages.iter().zip(outcomes) {
        let outcome = outcome.unwrap_or(Err(HandlerError::Unavailable));
        settle(handler, name, max_deliveries, message, outcome).await?;
    }
    Ok(())
}
