//! Many calls at once (`Idempotent::run_batch`, for consumers that fetch N messages): each
//! call gets what `run` would give it, with the claims and the records of the batch sent
//! together; and batches racing on the same keys from several stores (processes) run each
//! body exactly once, on every SQL database.

mod support;

use futures_util::FutureExt;
use idem::protocol::Idempotent;
use idem::{Error, Fingerprint, Key, MemoryStore, OnConflict, Options, Store};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use support::sql::Backend;

const NAMESPACE: &str = "tests.batch";

fn key(id: &str) -> Key {
    Key::new(NAMESPACE, id).unwrap()
}

fn handler(on_conflict: OnConflict) -> Idempotent<u64, Error> {
    Idempotent::new(Options {
        on_conflict,
        wait_timeout: Duration::from_secs(30),
        ..Options::new(NAMESPACE)
    })
}

/// A batch of calls `(id, amount)` whose body counts its runs and doubles the amount.
async fn batch<S: Store + ?Sized>(
    handle: &Idempotent<u64, Error>,
    store: &S,
    runs: &AtomicU32,
    calls: &[(&str, u64)],
) -> Vec<Result<u64, Error>> {
    let calls = calls.iter().map(|&(id, amount)| {
        let body = async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(amount * 2)
        };
        (key(id), Fingerprint::of(&amount).unwrap(), body)
    });
    handle.run_batch(store, calls.collect()).await
}

fn values(results: Vec<Result<u64, Error>>) -> Vec<u64> {
    results.into_iter().map(Result::unwrap).collect()
}

#[tokio::test]
async fn each_body_runs_once_then_replays() {
    let (store, runs) = (MemoryStore::new(), AtomicU32::new(0));
    let handle = handler(OnConflict::Reject);
    let calls = [("a", 1), ("b", 2), ("c", 3)];
    assert_eq!(
        values(batch(&handle, &store, &runs, &calls).await),
        [2, 4, 6]
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    // Again, and mixed with a new key: the recorded ones replay.
    let calls = [("c", 3), ("d", 4), ("a", 1)];
    assert_eq!(
        values(batch(&handle, &store, &runs, &calls).await),
        [6, 8, 2]
    );
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    // One call at a time sees the batch's records.
    let one = handle
        .run(&store, key("b"), Fingerprint::of(&2_u64).unwrap(), async {
            Ok(0)
        })
        .await;
    assert_eq!(one.unwrap(), 4);
}

#[tokio::test]
async fn a_redelivery_in_the_same_batch_replays() {
    let (store, runs) = (MemoryStore::new(), AtomicU32::new(0));
    let calls = [("r", 5), ("s", 6), ("r", 5)];
    let results = batch(&handler(OnConflict::Reject), &store, &runs, &calls).await;
    assert_eq!(values(results), [10, 12, 10]);
    let calls = [("w", 7), ("w", 7)];
    let results = batch(&handler(OnConflict::Wait), &store, &runs, &calls).await;
    assert_eq!(values(results), [14, 14]);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_key_another_call_holds_is_refused_or_waited_for() {
    let store = Arc::new(MemoryStore::new());
    let runs = AtomicU32::new(0);
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    // Another call holds "h" until told to finish.
    let holder = tokio::spawn({
        let store = store.clone();
        async move {
            let fingerprint = Fingerprint::of(&9_u64).unwrap();
            let body = async {
                let _ = released.await;
                Ok(18)
            };
            let handle = handler(OnConflict::Reject);
            handle.run(&*store, key("h"), fingerprint, body).await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let calls = [("h", 9), ("i", 1)];
    let results = batch(&handler(OnConflict::Reject), &*store, &runs, &calls).await;
    assert!(
        matches!(results[0], Err(Error::InProgress)),
        "{:?}",
        results[0]
    );
    assert_eq!(results[1].as_ref().ok(), Some(&2));
    let wait = handler(OnConflict::Wait);
    let waiting = batch(&wait, &*store, &runs, &calls);
    let finish = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(()).unwrap();
    };
    let (results, ()) = tokio::join!(waiting, finish);
    assert_eq!(values(results), [18, 2]);
    assert_eq!(holder.await.unwrap().unwrap(), 18);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "only i's body ran in the batches"
    );
}

#[tokio::test]
async fn another_payload_under_a_recorded_key_is_refused() {
    let (store, runs) = (MemoryStore::new(), AtomicU32::new(0));
    let handle = handler(OnConflict::Reject);
    batch(&handle, &store, &runs, &[("m", 1)]).await;
    let results = batch(&handle, &store, &runs, &[("m", 2), ("n", 3)]).await;
    assert!(
        matches!(results[0], Err(Error::PayloadMismatch)),
        "{:?}",
        results[0]
    );
    assert_eq!(results[1].as_ref().ok(), Some(&6));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_error_is_released_and_runs_again() {
    let store = MemoryStore::new();
    let handle = handler(OnConflict::Reject);
    let runs = AtomicU32::new(0);
    for round in 0..2 {
        let calls = ["e", "f"].map(|id| {
            let runs = &runs;
            let body = async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if id == "e" && round == 0 {
                    Err(Error::WaitTimeout)
                } else {
                    Ok(1)
                }
            };
            (key(id), Fingerprint::of(id).unwrap(), body)
        });
        let results = handle.run_batch(&store, calls.into()).await;
        assert_eq!(
            results[0].is_ok(),
            round == 1,
            "round {round}: {:?}",
            results[0]
        );
        assert_eq!(results[1].as_ref().ok(), Some(&1));
    }
    // e ran twice (its error released the key), f once.
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_panicking_body_is_released_and_the_others_recorded() {
    let (store, runs) = (MemoryStore::new(), AtomicU32::new(0));
    let handle = handler(OnConflict::Reject);
    let calls = ["ok", "boom"].map(|id| {
        let runs = &runs;
        let body = async move {
            runs.fetch_add(1, Ordering::SeqCst);
            assert_ne!(id, "boom", "the body panics");
            Ok(1)
        };
        (key(id), Fingerprint::of(id).unwrap(), body)
    });
    let panicked = AssertUnwindSafe(handle.run_batch(&store, calls.into()))
        .catch_unwind()
        .await;
    assert!(panicked.is_err(), "the panic is resumed");
    // "ok" was recorded (replays), "boom" was released (runs again).
    let calls = ["ok", "boom"].map(|id| {
        let runs = &runs;
        let body = async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(2)
        };
        (key(id), Fingerprint::of(id).unwrap(), body)
    });
    assert_eq!(values(handle.run_batch(&store, calls.into()).await), [1, 2]);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_dropped_batch_releases_its_claims() {
    let store = MemoryStore::new();
    let handle = handler(OnConflict::Reject);
    let calls = ["x", "y"].map(|id| {
        let body = async { std::future::pending::<Result<u64, Error>>().await };
        (key(id), Fingerprint::of(id).unwrap(), body)
    });
    let pending = handle.run_batch(&store, calls.into());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), pending)
            .await
            .is_err()
    );
    // The claims went with the batch: the keys run again at once.
    let (runs, calls) = (AtomicU32::new(0), [("x", 1), ("y", 2)]);
    assert_eq!(values(batch(&handle, &store, &runs, &calls).await), [2, 4]);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Batches racing on the same keys: `STORES` stores (each its own pool, as separate
/// processes would have), `BATCHES` batches on each, every batch calling every key (in
/// its own order, `on_conflict = wait`); each body writes an effect row. Every key has
/// exactly one effect, and every call its result.
async fn race(backend: Backend) {
    const STORES: usize = 3;
    const BATCHES: usize = 4;
    const KEYS: usize = 64;
    let table = support::sql::unique("idem_batch");
    let mut dbs = Vec::new();
    for _ in 0..STORES {
        dbs.push(Arc::new(backend.open(&table, false).await));
    }
    let handle = Arc::new(handler(OnConflict::Wait));
    let mut tasks = tokio::task::JoinSet::new();
    for b in 0..STORES * BATCHES {
        let (db, handle, table) = (dbs[b % STORES].clone(), handle.clone(), table.clone());
        tasks.spawn(async move {
            let ids: Vec<usize> = (0..KEYS).map(|k| (k * 7 + b * 13) % KEYS).collect();
            let calls = ids.iter().map(|&k| {
                let (db, id) = (db.clone(), format!("{table}-{k}"));
                let body = async move {
                    db.effect(&id, &format!("batch {b}")).await;
                    Ok(k as u64)
                };
                (
                    key(&format!("{table}-{k}")),
                    Fingerprint::of(&k).unwrap(),
                    body,
                )
            });
            let results = handle.run_batch(&*db.store, calls.collect()).await;
            for (k, result) in ids.into_iter().zip(results) {
                assert_eq!(result.unwrap(), k as u64);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let counts = dbs[0].effect_counts().await;
    assert_eq!(counts.len(), KEYS, "every key ran: {counts:?}");
    assert!(
        counts.iter().all(|(_, n)| *n == 1),
        "each exactly once: {counts:?}"
    );
    dbs[0].drop_tables(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_race_exactly_once_sqlite() {
    race(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_race_exactly_once_postgres() {
    if let Some(backend) = Backend::postgres() {
        race(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_race_exactly_once_mysql() {
    if let Some(backend) = Backend::mysql() {
        race(backend).await;
    }
}

/// A consumer's batch, as README's "Message consumers" shows it: events (one of them
/// redelivered in the batch) booked once each, every message acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_batch() {
    #[derive(serde::Serialize)]
    struct Event {
        event_id: String,
        amount_cents: u64,
    }
    async fn book(db: &support::sql::Db, event: &Event) -> Result<u64, Error> {
        db.effect(&event.event_id, "consumer").await;
        Ok(event.amount_cents)
    }
    let table = support::sql::unique("idem_batch_consumer");
    let db = Backend::sqlite().open(&table, false).await;
    let store = &*db.store;
    let events: Vec<Event> = [("e-1", 100), ("e-2", 200), ("e-1", 100)]
        .map(|(id, cents)| Event {
            event_id: id.to_owned(),
            amount_cents: cents,
        })
        .into();

    let handle = Idempotent::<u64, Error>::new(Options {
        on_conflict: OnConflict::Wait,
        ..Options::new("payments.book")
    });
    let calls = events.iter().map(|event| {
        let key = Key::new("payments.book", &*event.event_id)?;
        Ok((key, Fingerprint::of(event)?, book(&db, event)))
    });
    let calls = calls.collect::<Result<Vec<_>, Error>>().unwrap();
    let results = handle.run_batch(store, calls).await;
    // ack each message whose result is Ok; nack or dead-letter the others

    let acked: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(acked, [100, 200, 100]);
    let counts = db.effect_counts().await;
    assert_eq!(counts, [("e-1".to_owned(), 1), ("e-2".to_owned(), 1)]);
    db.drop_tables(&table).await;
}

/// A batch's store keeps its connection warm for the next batch for a moment, then gives it
/// back: the application's `Pool::close` at shutdown, which waits for every connection,
/// returns. (Before the kept connections were given back, it waited forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_closes_after_batches() {
    let table = support::sql::unique("idem_batch_close");
    let db = Backend::sqlite().open(&table, false).await;
    let handle = handler(OnConflict::Reject);
    for round in 0..3_u64 {
        let calls = (0..8_u64).map(|i| {
            let id = format!("{table}-{round}-{i}");
            (key(&id), Fingerprint::of(&i).unwrap(), async move { Ok(i) })
        });
        let results = handle.run_batch(&*db.store, calls.collect()).await;
        assert_eq!(values(results), (0..8).collect::<Vec<_>>());
    }
    db.drop_tables(&table).await;
    let support::sql::Effects::Sqlite(pool) = &db.effects else {
        unreachable!("an SQLite backend")
    };
    tokio::time::timeout(Duration::from_secs(2), pool.close())
        .await
        .expect("the pool closes within 2 s");
}

/// A [`MemoryStore`] with quirks: batches that answer `unanswered` items too few (a bug of
/// its own), records that take `record_delay` to write; it counts the renewals that found
/// their claim gone.
#[derive(Default)]
struct Quirky {
    inner: MemoryStore,
    unanswered: usize,
    record_delay: Duration,
    renewed_gone: AtomicU32,
}

#[async_trait::async_trait]
impl Store for Quirky {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<idem::store::Claim, idem::StoreError> {
        self.inner.claim(key, fingerprint, lease).await
    }
    async fn renew(
        &self,
        key: &Key,
        token: idem::store::Token,
        lease: Duration,
    ) -> Result<(), idem::StoreError> {
        let renewed = self.inner.renew(key, token, lease).await;
        if matches!(renewed, Err(idem::StoreError::LeaseLost)) {
            self.renewed_gone.fetch_add(1, Ordering::SeqCst);
        }
        renewed
    }
    async fn complete(
        &self,
        key: &Key,
        token: idem::store::Token,
        output: idem::store::Output,
        ttl: Duration,
    ) -> Result<(), idem::StoreError> {
        tokio::time::sleep(self.record_delay).await;
        self.inner.complete(key, token, output, ttl).await
    }
    async fn release(&self, key: &Key, token: idem::store::Token) -> Result<(), idem::StoreError> {
        self.inner.release(key, token).await
    }
    async fn purge_expired(&self) -> Result<u64, idem::StoreError> {
        self.inner.purge_expired().await
    }
    async fn claim_batch(
        &self,
        claims: &[(&Key, &Fingerprint)],
        lease: Duration,
    ) -> Vec<Result<idem::store::Claim, idem::StoreError>> {
        // Only the first ones are even claimed.
        let n = claims.len().saturating_sub(self.unanswered);
        self.inner.claim_batch(&claims[..n], lease).await
    }
    async fn complete_batch(
        &self,
        records: &[(&Key, idem::store::Token, idem::store::Output)],
        ttl: Duration,
    ) -> Vec<Result<(), idem::StoreError>> {
        tokio::time::sleep(self.record_delay).await;
        let n = records.len().saturating_sub(self.unanswered);
        self.inner.complete_batch(&records[..n], ttl).await
    }
}

/// A store whose batch answers fewer items than it was given never moves a result to
/// another call: each call still gets its own (the unanswered claim runs on its own, the
/// unanswered record is written on its own), and a second batch replays them all.
#[tokio::test]
async fn a_short_answer_from_the_store_moves_no_result() {
    let store = Quirky {
        unanswered: 1,
        ..Quirky::default()
    };
    let runs = AtomicU32::new(0);
    let handle = handler(OnConflict::Reject);
    let calls = [("p", 1), ("q", 2), ("t", 3)];
    assert_eq!(
        values(batch(&handle, &store, &runs, &calls).await),
        [2, 4, 6]
    );
    assert_eq!(
        values(batch(&handle, &store, &runs, &calls).await),
        [2, 4, 6]
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

/// A call whose error released its key before the batch's records are written is not
/// renewed while they are: its heartbeat stops with the release (before, it went on
/// renewing a claim that was gone, and warned that a lease was lost).
#[tokio::test]
async fn a_released_claim_is_not_renewed_while_the_others_are_recorded() {
    let store = Quirky {
        record_delay: Duration::from_millis(150),
        ..Quirky::default()
    };
    // Renewed every 20 ms; the record takes 150 ms.
    let handle = Idempotent::<u64, Error>::new(Options {
        lease: Duration::from_millis(60),
        ..Options::new(NAMESPACE)
    });
    let calls = ["fails", "slow", "recorded"].map(|id| {
        let body = async move {
            match id {
                "fails" => Err(Error::WaitTimeout),
                // Pending once, so that the heartbeats start.
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok(2)
                }
                _ => Ok(1),
            }
        };
        (key(id), Fingerprint::of(id).unwrap(), body)
    });
    let results = handle.run_batch(&store, calls.into()).await;
    assert!(matches!(results[0], Err(Error::WaitTimeout)), "{results:?}");
    assert_eq!(results[1].as_ref().ok(), Some(&2));
    assert_eq!(results[2].as_ref().ok(), Some(&1));
    assert_eq!(
        store.renewed_gone.load(Ordering::SeqCst),
        0,
        "no renewal of a released claim"
    );
}
