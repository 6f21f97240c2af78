//! Coalesced claims and completes (`with_coalescing(true)`), the same on every SQL store:
//! races that count how often a body ran, and a count of the statements a burst of claims
//! sent, which shows that batching happens at all.

use idem_core::store::{Claim, Outcome, Output};
use idem_core::{Fingerprint, Key, Store};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use super::LONG_LEASE;

const NAMESPACE: &str = "idem_sqlx::tests::coalesce";

/// Every task claims its key until it gets the record: the one that claims it runs the
/// "body" (counts an execution, then completes with its own name), the others wait and
/// replay. `keys` keys, `per_key` tasks on each, all started at once.
pub async fn race<S: Store + 'static>(store: Arc<S>, keys: usize, per_key: usize) {
    let run = super::unique_table("race");
    let executions: Arc<Vec<AtomicU64>> = Arc::new((0..keys).map(|_| AtomicU64::new(0)).collect());
    let start = Arc::new(tokio::sync::Barrier::new(keys * per_key));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..keys {
        for t in 0..per_key {
            let (store, executions, start) = (store.clone(), executions.clone(), start.clone());
            let key = Key::new(NAMESPACE, format!("{run}-{k}").as_str()).unwrap();
            tasks.spawn(async move {
                let name = format!("task-{k}-{t}");
                let fp = Fingerprint::from_bytes([7; 32]);
                start.wait().await;
                loop {
                    match store.claim(&key, &fp, LONG_LEASE).await.unwrap() {
                        Claim::Claimed(token) => {
                            executions[k].fetch_add(1, Ordering::SeqCst);
                            let output = Output {
                                outcome: Outcome::Ok,
                                bytes: name.clone().into_bytes().into(),
                            };
                            store
                                .complete(&key, token, output, LONG_LEASE)
                                .await
                                .unwrap();
                            return (k, name);
                        }
                        Claim::Completed(record) => {
                            assert_eq!(record.fingerprint, fp);
                            return (k, String::from_utf8(record.output.bytes.to_vec()).unwrap());
                        }
                        Claim::InProgress(busy) => {
                            assert_eq!(busy.fingerprint, fp);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                }
            });
        }
    }
    let mut outputs: HashMap<usize, Vec<String>> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (k, output) = done.unwrap();
        outputs.entry(k).or_default().push(output);
    }
    for (k, count) in executions.iter().enumerate() {
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "key {k} ran {count:?} times"
        );
        let seen = &outputs[&k];
        assert_eq!(seen.len(), per_key);
        assert!(
            seen.iter().all(|o| o == &seen[0]),
            "key {k}: callers got different outputs {seen:?}"
        );
    }
}

/// 256 tasks on one key, then 4 tasks on each of 128 keys: every key's body runs exactly
/// once and every caller gets its output.
pub async fn each_body_runs_once<S: Store + 'static>(store: Arc<S>) {
    race(store.clone(), 1, 256).await;
    race(store, 128, 4).await;
}

/// 256 claims and completes at once send far fewer statements through `coalesced` than
/// through `plain` (the same store without coalescing, on the same `table`), whose count
/// shows that the counter counts.
pub async fn batches_send_fewer_statements<S: Store + 'static>(
    plain: Arc<S>,
    coalesced: Arc<S>,
    table: &str,
) {
    let one_by_one = statements_for_burst(plain, table, 256).await;
    let batched = statements_for_burst(coalesced, table, 256).await;
    println!("256 claims + completes: {one_by_one} statements one by one, {batched} coalesced");
    assert!(one_by_one >= 2 * 256, "{one_by_one}");
    // Far fewer (one batch's statements serve many calls; 6 to 11 here), with room for a
    // loaded machine on which the tasks reach the store spread out, in smaller batches.
    assert!(
        batched * 8 <= one_by_one,
        "{batched} statements coalesced, {one_by_one} one by one"
    );
}

/// 256 claims of fresh keys at once, each dropped after its own delay (0 to 50 ms, spread),
/// so that some are dropped while queued, some while their batch is in flight and some
/// after it answered: within a second, every key whose claim was dropped is free again.
pub async fn cancelled_claims_leave_nothing_behind<S: Store + 'static>(store: Arc<S>) {
    const CALLS: u64 = 256;
    let run = super::unique_table("cancel");
    let start = Arc::new(tokio::sync::Barrier::new(CALLS as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let (store, start) = (store.clone(), start.clone());
        let key = Key::new(NAMESPACE, format!("{run}-{i}").as_str()).unwrap();
        tasks.spawn(async move {
            let fp = Fingerprint::from_bytes([3; 32]);
            start.wait().await;
            let delay = Duration::from_micros(i * 50_000 / CALLS);
            match tokio::time::timeout(delay, store.claim(&key, &fp, LONG_LEASE)).await {
                Ok(Ok(Claim::Claimed(token))) => {
                    store.release(&key, token).await.unwrap();
                    (key, false)
                }
                Ok(other) => panic!("a fresh key: {other:?}"),
                Err(_) => (key, true),
            }
        });
    }
    let mut cancelled = 0;
    while let Some(done) = tasks.join_next().await {
        let (key, was_cancelled) = done.unwrap();
        if !was_cancelled {
            continue;
        }
        cancelled += 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let fp = Fingerprint::from_bytes([4; 32]);
        loop {
            match store.claim(&key, &fp, LONG_LEASE).await.unwrap() {
                Claim::Claimed(token) => {
                    store.release(&key, token).await.unwrap();
                    break;
                }
                Claim::InProgress(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!("a claim dropped {key:?} still held it 1 s later: {other:?}"),
            }
        }
    }
    assert!(
        cancelled > 0,
        "no claim was dropped: the check proved nothing"
    );
    println!("{cancelled} of {CALLS} claims dropped, none of them left behind");
}

/// `calls` claims of fresh keys at once, then their completes at once: the statements the
/// store sent to `table` for them (counted from sqlx's statement log).
pub async fn statements_for_burst<S: Store + 'static>(
    store: Arc<S>,
    table: &str,
    calls: usize,
) -> u64 {
    let counter = count_statements_on(table);
    let run = super::unique_table("burst");
    let start = Arc::new(tokio::sync::Barrier::new(calls));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let (store, start) = (store.clone(), start.clone());
        let key = Key::new(NAMESPACE, format!("{run}-{i}").as_str()).unwrap();
        tasks.spawn(async move {
            let fp = Fingerprint::from_bytes([1; 32]);
            start.wait().await;
            let Claim::Claimed(token) = store.claim(&key, &fp, LONG_LEASE).await.unwrap() else {
                panic!("a fresh key was not claimed");
            };
            let output = Output {
                outcome: Outcome::Ok,
                bytes: vec![1, 2, 3].into(),
            };
            store
                .complete(&key, token, output, LONG_LEASE)
                .await
                .unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    counter.load(Ordering::SeqCst)
}

/// Tables whose statements are being counted, and their counts.
type Counted = Mutex<Vec<(String, Arc<AtomicU64>)>>;

fn counted() -> &'static Counted {
    static COUNTED: OnceLock<Counted> = OnceLock::new();
    COUNTED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(StatementCounter);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global tracing subscriber in this test binary");
        Mutex::default()
    })
}

/// From now on, counts the statements that name `table` (sqlx logs every statement it
/// runs, at target `sqlx::query`).
fn count_statements_on(table: &str) -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    counted()
        .lock()
        .unwrap()
        .push((table.to_ascii_lowercase(), count.clone()));
    count
}

struct StatementCounter;

impl<S: tracing::Subscriber> Layer<S> for StatementCounter {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.target() == "sqlx::query"
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        // The summary, and the whole statement when the summary is shorter.
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{value:?} "));
            }
            fn record_str(&mut self, _: &tracing::field::Field, value: &str) {
                self.0.push_str(value);
                self.0.push(' ');
            }
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        let text = text.0.to_ascii_lowercase();
        for (table, count) in counted().lock().unwrap().iter() {
            if text.contains(table.as_str()) {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}
