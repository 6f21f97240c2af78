//! The message handler the consumer examples share (`consumer_rabbitmq.rs`,
//! `consumer_nats.rs`), and their tests with them (`tests/consumer_*.rs` include this file):
//! the event, the `#[idempotent]` handler that writes its effect row, and the settings.
//!
//! The broker loops only decide what to tell the broker; everything about the effect — and
//! about running it once per event id — is here.

use idem::protocol::Idempotent;
use idem::sqlx::{PgStore, SqliteStore};
use idem::{Fingerprint, FingerprintBuilder, Key, OnConflict, Options, Tracked, idempotent};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, PgPool, Postgres, SqlitePool, Transaction};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One message: a payment to book. `event_id` is the producer's id, the same in every copy
/// of the message (a redelivery, or the producer publishing it again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Event {
    pub(crate) event_id: String,
    pub(crate) amount_cents: i64,
    /// What the demo pretends happens when this event is handled.
    pub(crate) demo: Demo,
}

/// `n` demo events for the examples: every tenth fails on its first delivery, two never
/// succeed, one is invalid. (The tests publish their own.)
#[cfg_attr(test, allow(dead_code))]
pub(crate) fn demo_events(n: usize) -> Vec<Event> {
    let run = std::process::id();
    (0..n)
        .map(|i| Event {
            event_id: format!("evt-{run}-{i}"),
            amount_cents: 100 + i as i64,
            demo: match i {
                1 | 2 => Demo::AlwaysFail,
                3 => Demo::Invalid,
                _ if i % 10 == 0 => Demo::FailFirstDelivery,
                _ => Demo::Ok,
            },
        })
        .collect()
}

/// Runs `consume` (an example's consumer loop) until it ends, printing the handler's counts
/// every second and once more at the end.
#[cfg_attr(test, allow(dead_code))]
pub(crate) async fn reporting<T>(handler: &Handler, consume: impl Future<Output = T>) -> T {
    let report = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            println!("{}", handler.stats.line());
        }
    };
    let out = tokio::select! {
        out = consume => out,
        () = report => unreachable!("the report loop does not end"),
    };
    println!("stopped: {}", handler.stats.line());
    out
}

/// Resolves at Ctrl-C: the examples' stop signal.
#[cfg_attr(test, allow(dead_code))]
pub(crate) async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// The failures the demo (and the tests) inject.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) enum Demo {
    /// Handled at once.
    Ok,
    /// A transient failure the first time the broker delivers this message: the handler
    /// returns a retryable error, the consumer nacks, the redelivery succeeds.
    FailFirstDelivery,
    /// A downstream that never comes back: retryable errors until the broker's delivery
    /// limit dead-letters it.
    AlwaysFail,
    /// An event the handler can never accept: a permanent error, dead-lettered at once.
    Invalid,
}

/// What the handler recorded for an event: the effect row it wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Booked {
    pub(crate) effect_id: i64,
}

/// Why a message was not handled.
#[derive(Debug)]
pub(crate) enum HandlerError {
    Idem(idem::Error),
    Database(sqlx::Error),
    /// A dependency is unavailable: try again later.
    Unavailable,
    /// The event can never be handled.
    Invalid,
}

impl From<idem::Error> for HandlerError {
    fn from(e: idem::Error) -> Self {
        HandlerError::Idem(e)
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Database(e)
    }
}

impl HandlerError {
    /// Redelivering cannot help: dead-letter the message now instead of requeueing it.
    /// idem's own errors say it themselves (`Error::is_permanent`: a payload mismatch, a
    /// missing key, ...; a conflict or a store outage is worth a redelivery).
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            HandlerError::Idem(e) => e.is_permanent(),
            HandlerError::Invalid => true,
            HandlerError::Database(_) | HandlerError::Unavailable => false,
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::Idem(e) => write!(f, "{e}"),
            HandlerError::Database(e) => write!(f, "database: {e}"),
            HandlerError::Unavailable => write!(f, "downstream unavailable"),
            HandlerError::Invalid => write!(f, "invalid event"),
        }
    }
}

impl std::error::Error for HandlerError {}

/// The settings, from the environment (defaults in brackets).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `DATABASE_URL` [an SQLite file in the temp dir]: the store and the effects.
    pub(crate) database_url: Option<String>,
    /// `TABLE` [`consumer_demo`]: the store's table; the effects go to `<TABLE>_effects`.
    pub(crate) table: String,
    /// `MODE` [`plain`]: `tx` writes the effect and the record in one PostgreSQL
    /// transaction.
    pub(crate) transactional: bool,
    /// `PREFETCH` [32]: messages in flight at once, each handled on its own task.
    pub(crate) prefetch: u16,
    /// `BATCH` [0: one message at a time]: NATS only — pull up to this many messages at a
    /// time and handle them together (`Handler::handle_batch`), `PREFETCH / BATCH` batches
    /// at once.
    #[allow(
        dead_code,
        reason = "the RabbitMQ consumer takes one message at a time"
    )]
    pub(crate) batch: u16,
    /// `MAX_DELIVERIES` [5]: deliveries of a message before the broker dead-letters it.
    pub(crate) max_deliveries: u16,
    /// `WORKER` [`pid-<pid>`]: this process' name in the effect rows.
    pub(crate) worker: String,
    /// `CRASH_AFTER_COMMIT` [none]: a crash drill for transactional mode — abort the
    /// process right after the transaction of this event id commits, before its ack.
    pub(crate) crash_after_commit: Option<String>,
}

impl Settings {
    pub(crate) fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str, default: u16| {
            var(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
            })
        };
        let table = var("TABLE").unwrap_or_else(|| "consumer_demo".into());
        assert!(
            !table.is_empty()
                && table.len() <= 48
                && table
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "TABLE must be a plain identifier: letters, digits and `_`"
        );
        Settings {
            database_url: var("DATABASE_URL"),
            table,
            transactional: match var("MODE").as_deref() {
                None | Some("plain") => false,
                Some("tx") => true,
                Some(other) => panic!("MODE is `plain` or `tx`, not {other:?}"),
            },
            prefetch: number("PREFETCH", 32),
            batch: number("BATCH", 0),
            max_deliveries: number("MAX_DELIVERIES", 5),
            worker: var("WORKER").unwrap_or_else(|| format!("pid-{}", std::process::id())),
            crash_after_commit: var("CRASH_AFTER_COMMIT"),
        }
    }
}

/// Where the effects and the records live.
enum Backend {
    Sqlite {
        store: SqliteStore,
        pool: SqlitePool,
    },
    Postgres {
        store: PgStore,
        pool: PgPool,
    },
    /// PostgreSQL, the effect and the record in one transaction.
    PostgresTx {
        store: PgStore,
        pool: PgPool,
    },
}

/// Handles events: one effect row per event id, however often the event is delivered.
pub(crate) struct Handler {
    backend: Backend,
    effects: String,
    worker: String,
    crash_after_commit: Option<String>,
    pub(crate) stats: Stats,
}

/// What this process did, for the log line.
#[derive(Default)]
pub(crate) struct Stats {
    /// Bodies that ran and returned `Ok`.
    pub(crate) executed: AtomicU64,
    /// Deliveries answered from the record (a duplicate or a redelivery of a handled event).
    pub(crate) replayed: AtomicU64,
    /// Deliveries handed back for redelivery (a retryable error).
    pub(crate) requeued: AtomicU64,
    /// Deliveries this process sent to the dead letters: a permanent error, or (NATS) a
    /// retryable one on the last allowed delivery. RabbitMQ dead-letters those past its
    /// delivery limit itself.
    pub(crate) dead_lettered: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "executed {} replayed {} requeued {} dead-lettered {}",
            get(&self.executed),
            get(&self.replayed),
            get(&self.requeued),
            get(&self.dead_lettered)
        )
    }
}

impl Handler {
    /// Connects, and creates the store's table and the effects table if they are missing.
    pub(crate) async fn connect(
        settings: &Settings,
    ) -> Result<Handler, Box<dyn std::error::Error>> {
        let effects = format!("{}_effects", settings.table);
        let backend = match settings.database_url.as_deref() {
            Some(url) if url.starts_with("postgres") => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(u32::from(settings.prefetch).clamp(2, 20))
                    .test_before_acquire(false)
                    .connect(url)
                    .await?;
                let store = PgStore::new(pool.clone()).with_table(&settings.table)?;
                store.migrate().await?;
                sqlx::query(AssertSqlSafe(format!(
                    "CREATE TABLE IF NOT EXISTS {effects} (id BIGSERIAL PRIMARY KEY, \
                     event_id TEXT NOT NULL, worker TEXT NOT NULL, amount_cents BIGINT NOT NULL)"
                )))
                .execute(&pool)
                .await?;
                if settings.transactional {
                    Backend::PostgresTx { store, pool }
                } else {
                    Backend::Postgres { store, pool }
                }
            }
            Some(url) if !url.starts_with("sqlite") => {
                return Err(
                    format!("DATABASE_URL is postgres://… or sqlite://…, not {url}").into(),
                );
            }
            _ if settings.transactional => {
                return Err("MODE=tx needs DATABASE_URL=postgres://…".into());
            }
            url => {
                let url = url.map_or_else(
                    || {
                        let file = std::env::temp_dir().join("idem_consumer_demo.sqlite");
                        format!("sqlite://{}?mode=rwc", file.display())
                    },
                    str::to_owned,
                );
                let options: SqliteConnectOptions = url.parse()?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(
                        options
                            .journal_mode(SqliteJournalMode::Wal)
                            .busy_timeout(Duration::from_secs(30)),
                    )
                    .await?;
                let store = SqliteStore::new(pool.clone()).with_table(&settings.table)?;
                store.migrate().await?;
                sqlx::query(AssertSqlSafe(format!(
                    "CREATE TABLE IF NOT EXISTS {effects} (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                     event_id TEXT NOT NULL, worker TEXT NOT NULL, amount_cents BIGINT NOT NULL)"
                )))
                .execute(&pool)
                .await?;
                Backend::Sqlite { store, pool }
            }
        };
        Ok(Handler {
            backend,
            effects,
            worker: settings.worker.clone(),
            crash_after_commit: settings.crash_after_commit.clone(),
            stats: Stats::default(),
        })
    }

    /// Handles one delivery of `event`; `first_delivery` is what the broker says. `Ok` —
    /// ran, or replayed the recorded result — means ack.
    pub(crate) async fn handle(
        &self,
        event: &Event,
        first_delivery: bool,
    ) -> Result<Tracked<Booked>, HandlerError> {
        let booked = match &self.backend {
            Backend::Sqlite { store, pool } => {
                let db = Db::Sqlite(pool);
                book(store, &db, self, event, first_delivery).await?
            }
            Backend::Postgres { store, pool } => {
                let db = Db::Postgres(pool);
                book(store, &db, self, event, first_delivery).await?
            }
            Backend::PostgresTx { store, pool } => {
                let mut tx = pool.begin().await?;
                let booked = book_tx(store, &mut tx, self, event, first_delivery).await?;
                // A failed commit undoes the effect, the claim and the record together:
                // an `Err` like any other, and the redelivery runs once.
                tx.commit().await?;
                if self.crash_after_commit.as_deref() == Some(event.event_id.as_str()) {
                    eprintln!(
                        "crash drill: aborting after the commit of {}",
                        event.event_id
                    );
                    std::process::abort();
                }
                booked
            }
        };
        self.count(&booked);
        Ok(booked)
    }

    /// Handles many deliveries at once, each as [`handle`](Self::handle) would, with the
    /// results in their order: in plain mode through `Idempotent::run_batch` — one claim
    /// statement and one record statement for the whole batch instead of two per message
    /// — under the same records as `handle`'s, so a batch and a single delivery of one
    /// event replay each other. Transactional mode (a transaction per event) handles them
    /// concurrently, one by one.
    #[allow(
        dead_code,
        reason = "the RabbitMQ consumer takes one message at a time"
    )]
    pub(crate) async fn handle_batch(
        &self,
        deliveries: &[(Event, bool)],
    ) -> Vec<Result<Tracked<Booked>, HandlerError>> {
        let results = match &self.backend {
            Backend::Sqlite { store, pool } => {
                book_batch(store, &Db::Sqlite(pool), self, deliveries).await
            }
            Backend::Postgres { store, pool } => {
                book_batch(store, &Db::Postgres(pool), self, deliveries).await
            }
            Backend::PostgresTx { .. } => {
                let each = deliveries
                    .iter()
                    .map(|(event, first)| self.handle(event, *first));
                return futures_util::future::join_all(each).await;
            }
        };
        for booked in results.iter().flatten() {
            self.count(booked);
        }
        results
    }

    fn count(&self, booked: &Tracked<Booked>) {
        let counter = if booked.was_replayed() {
            &self.stats.replayed
        } else {
            &self.stats.executed
        };
        Stats::add(counter);
    }
}

/// The plain mode's effect: a row on its own connection (not in the store's transaction).
enum Db<'a> {
    Sqlite(&'a SqlitePool),
    Postgres(&'a PgPool),
}

/// What the demo's handler does before booking: fail as `event.demo` says.
fn simulate(event: &Event, first_delivery: bool) -> Result<(), HandlerError> {
    match event.demo {
        Demo::Ok => Ok(()),
        Demo::FailFirstDelivery if first_delivery => Err(HandlerError::Unavailable),
        Demo::FailFirstDelivery => Ok(()),
        Demo::AlwaysFail => Err(HandlerError::Unavailable),
        Demo::Invalid => Err(HandlerError::Invalid),
    }
}

/// Books a payment once per event id (plain mode).
///
/// A redelivery that finds the event's claim held waits (`on_conflict = wait`) instead of
/// failing: its owner may be another task or process still working (then this one replays
/// its result) or a process that died (then the claim's lease runs out and this one runs).
/// So `wait_timeout` is above the lease: a redelivery of an orphaned claim is handled, not
/// nacked again and again. The short lease bounds that wait; the heartbeat keeps the claim
/// of a live but slow body.
#[idempotent(
    key = event.event_id,
    store = store,
    name = "consumer.book",
    lease = "3s",
    on_conflict = wait,
    wait_timeout = "10s",
    skip(db, handler, first_delivery)
)]
async fn book<S: idem::Store>(
    store: &S,
    db: &Db<'_>,
    handler: &Handler,
    event: &Event,
    first_delivery: bool,
) -> Result<Tracked<Booked>, HandlerError> {
    effect(db, handler, event, first_delivery).await
}

/// [`book`]'s options, for its batches: the same namespace, lease and conflict policy.
const BOOK: Options = Options {
    lease: Duration::from_secs(3),
    on_conflict: OnConflict::Wait,
    wait_timeout: Duration::from_secs(10),
    ..Options::new("consumer.book")
};

/// [`book`] for many deliveries at once (`Idempotent::run_batch`), with the key and the
/// fingerprint the macro makes for it: a batch and a single delivery of one event share
/// its record.
async fn book_batch<S: idem::Store>(
    store: &S,
    db: &Db<'_>,
    handler: &Handler,
    deliveries: &[(Event, bool)],
) -> Vec<Result<Tracked<Booked>, HandlerError>> {
    let mut results: Vec<Option<Result<Tracked<Booked>, HandlerError>>> =
        deliveries.iter().map(|_| None).collect();
    let (mut calls, mut batched) = (Vec::new(), Vec::new());
    for (i, (event, first_delivery)) in deliveries.iter().enumerate() {
        match key_and_fingerprint(event) {
            Ok((key, fingerprint)) => {
                let body = effect(db, handler, event, *first_delivery);
                calls.push((key, fingerprint, body));
                batched.push(i);
            }
            Err(e) => results[i] = Some(Err(e.into())),
        }
    }
    let booking = Idempotent::<Tracked<Booked>, HandlerError>::new(BOOK);
    for (i, result) in batched
        .into_iter()
        .zip(booking.run_batch(store, calls).await)
    {
        results[i] = Some(result);
    }
    results.into_iter().flatten().collect()
}

/// What `#[idempotent(key = event.event_id, skip(..))]` on [`book`] makes of `event`: the
/// key in its namespace, and the fingerprint of the one argument it hashes.
fn key_and_fingerprint(event: &Event) -> Result<(Key, Fingerprint), idem::Error> {
    let key = Key::new(BOOK.namespace, &event.event_id)?;
    let mut fingerprint = FingerprintBuilder::new();
    fingerprint.arg(event);
    Ok((key, fingerprint.finish()?))
}

/// The booking itself: fail as the demo says, else write the effect row.
async fn effect(
    db: &Db<'_>,
    handler: &Handler,
    event: &Event,
    first_delivery: bool,
) -> Result<Tracked<Booked>, HandlerError> {
    simulate(event, first_delivery)?;
    let insert = format!(
        "INSERT INTO {} (event_id, worker, amount_cents) VALUES ($1, $2, $3) RETURNING id",
        handler.effects
    );
    let effect_id = match db {
        Db::Sqlite(pool) => {
            sqlx::query_scalar(AssertSqlSafe(insert))
                .bind(&event.event_id)
                .bind(&handler.worker)
                .bind(event.amount_cents)
                .fetch_one(*pool)
                .await?
        }
        Db::Postgres(pool) => {
            sqlx::query_scalar(AssertSqlSafe(insert))
                .bind(&event.event_id)
                .bind(&handler.worker)
                .bind(event.amount_cents)
                .fetch_one(*pool)
                .await?
        }
    };
    Ok(Tracked::new(Booked { effect_id }))
}

/// Books a payment once per event id (transactional mode): the effect row, the claim and
/// the record are written in `tx` and commit together. A duplicate waits on the first
/// one's uncommitted row (up to `wait_timeout`), then replays.
#[idempotent(
    key = event.event_id,
    store = store,
    tx = tx,
    name = "consumer.book_tx",
    on_conflict = wait,
    wait_timeout = "10s",
    skip(handler, first_delivery)
)]
async fn book_tx(
    store: &PgStore,
    tx: &mut Transaction<'_, Postgres>,
    handler: &Handler,
    event: &Event,
    first_delivery: bool,
) -> Result<Tracked<Booked>, HandlerError> {
    simulate(event, first_delivery)?;
    let effect_id = sqlx::query_scalar(AssertSqlSafe(format!(
        "INSERT INTO {} (event_id, worker, amount_cents) VALUES ($1, $2, $3) RETURNING id",
        handler.effects
    )))
    .bind(&event.event_id)
    .bind(&handler.worker)
    .bind(event.amount_cents)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Tracked::new(Booked { effect_id }))
}
