//! A message consumer that survives redeliveries, on an SQLite file.
//!
//! `cargo run --example sqlite_store --features sqlite`
//!
//! Brokers deliver at least once: the same message can arrive twice (a lost ack, a consumer
//! restart). Keyed by the message id, the handler sends each email once however often its
//! message arrives — also after this program restarts, because the record is in the file.

use idem::idempotent;
use idem::sqlx::SqliteStore;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
struct Message {
    id: String,
    to: String,
    template: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sent {
    provider_id: String,
}

#[derive(Debug)]
enum ConsumerError {
    Idempotency(idem::Error),
}

impl From<idem::Error> for ConsumerError {
    fn from(e: idem::Error) -> Self {
        ConsumerError::Idempotency(e)
    }
}

/// Sends the email for one message, once per message id (kept 7 days).
#[idempotent(key = msg.id, store = store, ttl = "7days")]
async fn send_email(store: &SqliteStore, msg: Message) -> Result<Sent, ConsumerError> {
    println!("  sending {:?} to {}", msg.template, msg.to);
    Ok(Sent {
        provider_id: format!("email-{}", msg.id),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("idem-example.sqlite");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    let store = SqliteStore::new(pool);
    store.migrate().await?;
    println!("records in {}", path.display());

    // The broker redelivers m-2, and m-1 arrives again after a consumer restart.
    let deliveries = ["m-1", "m-2", "m-2", "m-3", "m-1"];
    for id in deliveries {
        let msg = Message {
            id: id.into(),
            to: format!("user-{id}@example.com"),
            template: "password-reset".into(),
        };
        println!("delivery of {id}:");
        match send_email(&store, msg).await {
            Ok(sent) => println!("  -> {sent:?}"),
            Err(ConsumerError::Idempotency(e)) => println!("  -> not processed: {e}"),
        }
    }
    println!("run it again: every message is a replay now, nothing is sent twice");
    Ok(())
}
