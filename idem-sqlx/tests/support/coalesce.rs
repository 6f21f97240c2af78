//! Coalesced claims and completes (`with_coalescing(true)`), the same on every SQL store:
//! races that count how often a body ran, and a count of the statements a burst of claims
//! sent, which shows that batching happens at all.

use idem_core::store::{Claim, Outcome, Output, Token};
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
/// replay. `keys` keys, `per_key` tasks on each, all started at once, task `t` of a key
/// on `stores[t % stores.len()]` (stores of separate processes, say).
pub async fn race<S: Store + 'static>(stores: &[Arc<S>], keys: usize, per_key: usize) {
    let run = super::unique_table("race");
    let executions: Arc<Vec<AtomicU64>> = Arc::new((0..keys).map(|_| AtomicU64::new(0)).collect());
    let start = Arc::new(tokio::sync::Barrier::new(keys * per_key));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..keys {
        for t in 0..per_key {
            let store = stores[t % stores.len()].clone();
            let (executions, start) = (executions.clone(), start.clone());
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
    race(std::slice::from_ref(&store), 1, 256).await;
    race(&[store], 128, 4).await;
}

/// The same on two stores of one table, each with queues of its own (as two processes
/// have): their batches race each other for the same keys.
pub async fn each_body_runs_once_across_stores<S: Store + 'static>(a: Arc<S>, b: Arc<S>) {
    race(&[a.clone(), b.clone()], 1, 256).await;
    race(&[a, b], 128, 4).await;
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

/// A small deterministic random generator (xorshift64*), so that a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A lease or TTL of the differential check: one that has run out by the next round, or
/// one that outlives the check.
const SHORT: Duration = Duration::from_millis(1);

/// Which token a `complete` or `release` of the differential check sends, resolved by each
/// store from the tokens it handed out for the key.
#[derive(Clone, Copy, Debug)]
enum Which {
    /// The last token a claim of the key returned.
    Current,
    /// A token of an earlier owner of the key (superseded by a takeover or a release).
    Stale,
    /// A token no claim returned.
    Bogus,
}

/// One operation of a round of the differential check, on a key of its own in the round.
#[derive(Clone, Copy, Debug)]
enum Op {
    Claim {
        fp: u8,
        short: bool,
    },
    /// Two claims of the key at once (on the coalesced store likely in one batch), with
    /// fingerprints `a` and `b`.
    ClaimTwice {
        a: u8,
        b: u8,
    },
    Complete {
        which: Which,
        output: u8,
        short: bool,
        /// A second `complete` of the key at once, with this token (the same: a retry
        /// racing its first try; another: an earlier or later owner's racing this one).
        twice: Option<Which>,
    },
    Release {
        which: Which,
    },
}

/// An answer of a store, tokens aside (the two stores make their own).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    Claimed,
    /// In progress, under a fingerprint (`None`: the one the other claim of a
    /// [`Op::ClaimTwice`] won with).
    InProgress(Option<[u8; 32]>),
    Completed([u8; 32], bool, Vec<u8>),
    Done,
    LeaseLost,
    Failed(String),
}

/// What each store knows of a key: the tokens its claims returned, the last one last.
#[derive(Default, Clone)]
struct Tokens(Vec<Vec<Token>>);

impl Tokens {
    fn pick(&self, key: usize, which: Which) -> Token {
        let bogus = Token::new(0x1d3e_0000_0000_0000 + key as u64);
        let tokens = &self.0[key];
        match which {
            Which::Current => tokens.last().copied().unwrap_or(bogus),
            Which::Stale if tokens.len() >= 2 => tokens[tokens.len() - 2],
            Which::Stale | Which::Bogus => bogus,
        }
    }
}

fn fingerprint_of(byte: u8) -> Fingerprint {
    Fingerprint::from_bytes([byte; 32])
}

fn claim_answer(claim: Result<Claim, idem_core::StoreError>) -> (Answer, Option<Token>) {
    match claim {
        Ok(Claim::Claimed(token)) => (Answer::Claimed, Some(token)),
        Ok(Claim::InProgress(busy)) => {
            (Answer::InProgress(Some(*busy.fingerprint.as_bytes())), None)
        }
        Ok(Claim::Completed(record)) => (
            Answer::Completed(
                *record.fingerprint.as_bytes(),
                record.output.outcome == Outcome::Ok,
                record.output.bytes.to_vec(),
            ),
            None,
        ),
        Err(e) => (Answer::Failed(format!("claim: {e}")), None),
    }
}

fn done_answer(done: Result<(), idem_core::StoreError>) -> Answer {
    match done {
        Ok(()) => Answer::Done,
        Err(idem_core::StoreError::LeaseLost) => Answer::LeaseLost,
        Err(e) => Answer::Failed(format!("{e}")),
    }
}

/// Runs `op` on key `k` of `store`: its answers (two for the doubled operations, sorted,
/// the loser of a [`Op::ClaimTwice`] answered relative to the winner) and the token a claim
/// won, if any. `at_once`: the doubled operation's two calls run concurrently, else one
/// after the other.
async fn apply<S: Store + 'static>(
    store: Arc<S>,
    key: Key,
    op: Op,
    (token, second): (Token, Token),
    at_once: bool,
) -> (Vec<Answer>, Option<Token>) {
    let output = |byte: u8| Output {
        outcome: if byte.is_multiple_of(3) {
            Outcome::Err
        } else {
            Outcome::Ok
        },
        bytes: vec![byte; 1 + byte as usize % 5].into(),
    };
    let time = |short: bool| if short { SHORT } else { LONG_LEASE };
    match op {
        Op::Claim { fp, short } => {
            let (answer, won) =
                claim_answer(store.claim(&key, &fingerprint_of(fp), time(short)).await);
            (vec![answer], won)
        }
        Op::ClaimTwice { a, b } => {
            let (fa, fb) = (fingerprint_of(a), fingerprint_of(b));
            let (ra, rb) = if at_once {
                tokio::join!(
                    store.claim(&key, &fa, LONG_LEASE),
                    store.claim(&key, &fb, LONG_LEASE)
                )
            } else {
                let ra = store.claim(&key, &fa, LONG_LEASE).await;
                (ra, store.claim(&key, &fb, LONG_LEASE).await)
            };
            let (mut aa, wa) = claim_answer(ra);
            let (mut ab, wb) = claim_answer(rb);
            // The loser of a race sees the winner's fingerprint.
            if wa.is_some() && ab == Answer::InProgress(Some([a; 32])) {
                ab = Answer::InProgress(None);
            }
            if wb.is_some() && aa == Answer::InProgress(Some([b; 32])) {
                aa = Answer::InProgress(None);
            }
            let mut answers = vec![aa, ab];
            answers.sort();
            (answers, wa.or(wb))
        }
        Op::Complete {
            output: byte,
            short,
            twice,
            ..
        } => {
            let once = |token| store.complete(&key, token, output(byte), time(short));
            let mut answers = if twice.is_none() {
                vec![done_answer(once(token).await)]
            } else if at_once {
                let (x, y) = tokio::join!(once(token), once(second));
                vec![done_answer(x), done_answer(y)]
            } else {
                let x = done_answer(once(token).await);
                vec![x, done_answer(once(second).await)]
            };
            answers.sort();
            (answers, None)
        }
        Op::Release { .. } => (vec![done_answer(store.release(&key, token).await)], None),
    }
}

/// The differential check of coalescing: the same random rounds of operations on `plain`
/// (without coalescing) and on `coalesced` (with), on tables of their own, and every
/// answer compared. A round touches each key at most once (a doubled operation aside), so
/// its answers do not depend on the order its calls run in: on `plain` one after the
/// other, on `coalesced` all at once, where they queue and go as batches that mix fresh
/// keys, live claims, expired ones (taken over), completed records and expired ones,
/// other fingerprints, stale and bogus tokens. Leases and TTLs are either 1 ms (run out
/// by the next round) or 10 minutes. `keys` keys (a round calls on about half of them, a
/// third of those claims and as many completes).
pub async fn same_answers_as_single_calls<S: Store + 'static>(
    plain: Arc<S>,
    coalesced: Arc<S>,
    seed: u64,
    rounds: usize,
    keys: usize,
) {
    let run = super::unique_table("differential");
    let count = keys;
    let keys: Vec<Key> = (0..count)
        .map(|k| Key::new(NAMESPACE, format!("{run}-{k}").as_str()).unwrap())
        .collect();
    // `IDEM_TEST_SEED` replays (or explores) another seed.
    let seed = std::env::var("IDEM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(seed, |base| base.wrapping_mul(31).wrapping_add(seed));
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut tokens = [
        Tokens(vec![Vec::new(); count]),
        Tokens(vec![Vec::new(); count]),
    ];
    let mut compared = 0;
    for round in 0..rounds {
        // A random half of the keys, each with a random operation.
        let mut ops = Vec::new();
        for k in 0..count {
            if rng.below(2) == 0 {
                continue;
            }
            let which = match rng.below(4) {
                0 | 1 => Which::Current,
                2 => Which::Stale,
                _ => Which::Bogus,
            };
            let op = match rng.below(10) {
                0..=3 => Op::Claim {
                    fp: 1 + rng.below(2) as u8,
                    short: rng.below(3) == 0,
                },
                4 => Op::ClaimTwice {
                    a: 1 + rng.below(2) as u8,
                    b: 1 + rng.below(2) as u8,
                },
                5..=8 => Op::Complete {
                    which,
                    output: rng.below(256) as u8,
                    short: rng.below(3) == 0,
                    twice: match rng.below(8) {
                        0 | 1 => Some(which),
                        2 => Some(Which::Current),
                        3 => Some(Which::Stale),
                        _ => None,
                    },
                },
                _ => Op::Release { which },
            };
            ops.push((k, op));
        }
        let token_of = |tokens: &Tokens, k: usize, op: Op| match op {
            Op::Complete { which, twice, .. } => (
                tokens.pick(k, which),
                tokens.pick(k, twice.unwrap_or(which)),
            ),
            Op::Release { which } => (tokens.pick(k, which), tokens.pick(k, which)),
            _ => (Token::new(1), Token::new(1)),
        };
        // One after the other on the plain store.
        let mut expected = Vec::new();
        for &(k, op) in &ops {
            let token = token_of(&tokens[0], k, op);
            expected.push(apply(plain.clone(), keys[k].clone(), op, token, false).await);
        }
        // All at once on the coalesced one.
        let start = Arc::new(tokio::sync::Barrier::new(ops.len()));
        let mut tasks = Vec::new();
        for &(k, op) in &ops {
            let token = token_of(&tokens[1], k, op);
            let (store, key, start) = (coalesced.clone(), keys[k].clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                apply(store, key, op, token, true).await
            }));
        }
        let mut got = Vec::new();
        for task in tasks {
            got.push(task.await.unwrap());
        }
        for (((k, op), (want, plain_won)), (answer, coalesced_won)) in
            ops.iter().zip(expected).zip(got)
        {
            assert_eq!(
                answer, want,
                "seed {seed}, round {round}, key {k}, {op:?}: coalesced answered {answer:?}, \
                 a single call {want:?}"
            );
            compared += answer.len();
            for (i, won) in [plain_won, coalesced_won].into_iter().enumerate() {
                if let Some(token) = won {
                    tokens[i].0[*k].push(token);
                }
            }
            // The winner of a doubled claim may differ between the stores (its
            // fingerprint with it): both let the key go, so that they agree again.
            if let Op::ClaimTwice { a, b } = op
                && a != b
            {
                for (i, store) in [&plain, &coalesced].into_iter().enumerate() {
                    if let (Some(_), Some(token)) =
                        ([plain_won, coalesced_won][i], tokens[i].0[*k].last())
                    {
                        store.release(&keys[*k], *token).await.unwrap();
                    }
                }
            }
        }
        // Every 1 ms lease and TTL of this round has run out by the next.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    println!(
        "seed {seed}: {rounds} rounds on {count} keys, {compared} answers, the same on both stores"
    );
}

/// A batch whose statements fail (here: the table is gone, `break_table` renamed it) fails
/// each of its callers — claims and completes, fresh keys and twice-claimed ones — with an
/// error, promptly: none hangs and none is told it succeeded. Once `restore_table` put it
/// back, the same calls succeed.
pub async fn a_failing_batch_fails_each_caller<S, B, R>(
    store: Arc<S>,
    break_table: B,
    restore_table: R,
) where
    S: Store + 'static,
    B: std::future::Future<Output = ()>,
    R: std::future::Future<Output = ()>,
{
    const KEYS: usize = 32;
    let run = super::unique_table("failing");
    let fp = Fingerprint::from_bytes([9; 32]);
    let keys: Vec<Key> = (0..2 * KEYS)
        .map(|k| Key::new(NAMESPACE, format!("{run}-{k}").as_str()).unwrap())
        .collect();
    let mut tokens = Vec::new();
    for key in &keys[..KEYS] {
        tokens.push(super::claimed(&*store, key, &fp, LONG_LEASE).await);
    }
    let output = || Output {
        outcome: Outcome::Ok,
        bytes: vec![9; 9].into(),
    };
    // Claims of the fresh keys (each twice) and completes of the claimed ones, all at once.
    let burst = |store: Arc<S>| {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            let (store, key) = (store.clone(), key.clone());
            let token = tokens.get(i).copied();
            tasks.spawn(async move {
                let call = async {
                    match token {
                        Some(token) => store
                            .complete(&key, token, output(), LONG_LEASE)
                            .await
                            .map(|()| "completed".to_owned()),
                        None => {
                            let (a, b) = tokio::join!(
                                store.claim(&key, &fp, LONG_LEASE),
                                store.claim(&key, &fp, LONG_LEASE)
                            );
                            match (a, b) {
                                (Ok(a), Ok(b)) => Ok(format!("{a:?} {b:?}")),
                                (Err(e), _) | (_, Err(e)) => Err(e),
                            }
                        }
                    }
                };
                let answer = tokio::time::timeout(Duration::from_secs(20), call).await;
                (i, answer.map(|a| a.map_err(|e| e.to_string())))
            });
        }
        tasks
    };
    break_table.await;
    let mut tasks = burst(store.clone());
    while let Some(done) = tasks.join_next().await {
        let (i, answer) = done.unwrap();
        match answer {
            Ok(Err(_)) => {}
            Ok(Ok(ok)) => panic!("call {i} on a table that is gone succeeded: {ok}"),
            Err(_) => panic!("call {i} on a table that is gone hung"),
        }
    }
    restore_table.await;
    let mut tasks = burst(store);
    while let Some(done) = tasks.join_next().await {
        let (i, answer) = done.unwrap();
        match answer {
            Ok(Ok(answer)) if i < KEYS => assert_eq!(answer, "completed"),
            Ok(Ok(answer)) => assert!(
                answer.starts_with("Claimed") ^ answer.contains(" Claimed"),
                "call {i}: two claims of a fresh key, one winner: {answer}"
            ),
            other => panic!("call {i} once the table was back: {other:?}"),
        }
    }
}

/// 128 completes at once, every third dropped after its own short delay (queued, in
/// flight or answered): the others are answered `Ok` whatever became of the dropped ones,
/// and a dropped one's retry (its token, its output) is `Ok` too, as a single call's retry
/// after a lost reply is. Every key then replays its output.
pub async fn cancelled_completes_break_nothing<S: Store + 'static>(store: Arc<S>) {
    const CALLS: usize = 128;
    let run = super::unique_table("cancel_complete");
    let fp = Fingerprint::from_bytes([5; 32]);
    let mut claimed = Vec::new();
    for i in 0..CALLS {
        let key = Key::new(NAMESPACE, format!("{run}-{i}").as_str()).unwrap();
        let token = super::claimed(&*store, &key, &fp, LONG_LEASE).await;
        claimed.push((key, token));
    }
    let output = |i: usize| Output {
        outcome: Outcome::Ok,
        bytes: format!("output {i}").into_bytes().into(),
    };
    let start = Arc::new(tokio::sync::Barrier::new(CALLS));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (key, token)) in claimed.iter().cloned().enumerate() {
        let (store, start) = (store.clone(), start.clone());
        tasks.spawn(async move {
            start.wait().await;
            let complete = store.complete(&key, token, output(i), LONG_LEASE);
            if i % 3 == 0 {
                let delay = Duration::from_micros((i * 20_000 / CALLS) as u64);
                if tokio::time::timeout(delay, complete).await.is_err() {
                    return (i, None);
                }
                return (i, Some(Ok(())));
            }
            (i, Some(complete.await.map_err(|e| e.to_string())))
        });
    }
    let mut dropped = 0;
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            (_, Some(Ok(()))) => {}
            (i, Some(Err(e))) => panic!("complete {i} next to dropped ones: {e}"),
            (i, None) => {
                dropped += 1;
                let (key, token) = &claimed[i];
                store
                    .complete(key, *token, output(i), LONG_LEASE)
                    .await
                    .unwrap_or_else(|e| panic!("the retry of dropped complete {i}: {e}"));
            }
        }
    }
    for (i, (key, _)) in claimed.iter().enumerate() {
        match store.claim(key, &fp, LONG_LEASE).await {
            Ok(Claim::Completed(record)) => assert_eq!(record.output, output(i), "key {i}"),
            other => panic!("key {i} after its complete: {other:?}"),
        }
    }
    assert!(
        dropped > 0,
        "no complete was dropped: the check proved nothing"
    );
    println!("{dropped} of {CALLS} completes dropped, none broke another");
}

/// A store's batch statements keep their connection for the next one (`warm.rs`) and give
/// it back to its pool (`pool`) soon after: every connection is idle again within two
/// seconds of the last batch. (Without that, a `Pool::close` after a batch waits forever.)
pub async fn batches_give_their_connections_back<S: Store, DB: sqlx::Database>(
    store: &S,
    pool: &sqlx::Pool<DB>,
) {
    let run = super::unique_table("warm");
    let keys: Vec<Key> = (0..16)
        .map(|i| Key::new("idem_sqlx::tests::warm", &format!("{run}-{i}")).unwrap())
        .collect();
    let fp = Fingerprint::from_bytes([7; 32]);
    let claims: Vec<(&Key, &Fingerprint)> = keys.iter().map(|k| (k, &fp)).collect();
    let mut records = Vec::new();
    for (key, claim) in keys
        .iter()
        .zip(store.claim_batch(&claims, LONG_LEASE).await)
    {
        let Ok(Claim::Claimed(token)) = claim else {
            panic!("a fresh key is claimed: {claim:?}");
        };
        records.push((key, token, super::output(b"done".to_vec())));
    }
    for done in store.complete_batch(&records, LONG_LEASE).await {
        done.unwrap();
    }
    let start = std::time::Instant::now();
    while pool.num_idle() < pool.size() as usize {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{} of {} connections still out after 2 s",
            pool.size() as usize - pool.num_idle(),
            pool.size()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The coalescing tests every backend runs, as test functions in the calling module. The
/// test file provides `with_store` and `exec(&pool, sql)`; the argument is what follows
/// the store among `with_store`'s closure parameters (nothing, or `, _db`).
macro_rules! coalescing_tests {
    ($($extra:tt)*) => {
        /// A store call's future is small (sqlx's ~8.6 KB `acquire` future is boxed),
        /// coalesced or not.
        #[tokio::test]
        async fn calls_stay_small() {
            with_store(|store $($extra)*| async move {
                support::calls_stay_small(&*store);
                support::calls_stay_small(&Arc::unwrap_or_clone(store).with_coalescing(true));
            })
            .await;
        }

        /// Outside the suite's list (it needs `release_on_drop` or a `claim_batch` of the
        /// store's own: the SQL stores have both), with coalescing off and on.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cancelled_batches_leave_nothing_behind() {
            with_store(|store $($extra)*| async move {
                idem_core::testing::cancelled_batches_leave_nothing_behind(&store).await;
                let store = Arc::unwrap_or_clone(store).with_coalescing(true);
                idem_core::testing::cancelled_batches_leave_nothing_behind(&Arc::new(store))
                    .await;
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn each_body_runs_once() {
            with_store(|store $($extra)*| async move {
                let store = Arc::unwrap_or_clone(store).with_coalescing(true);
                support::coalesce::each_body_runs_once(Arc::new(store)).await;
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cancelled_claims_leave_nothing_behind() {
            with_store(|store $($extra)*| async move {
                let store = Arc::unwrap_or_clone(store).with_coalescing(true);
                support::coalesce::cancelled_claims_leave_nothing_behind(Arc::new(store)).await;
            })
            .await;
        }

        /// The differential check: random rounds of claims, completes and releases on a
        /// store without coalescing and on one with (each claim order, its own seed),
        /// every answer compared.
        async fn differential(seeds: [u64; 3], rounds: usize, calls: usize) {
            let orders = [
                ClaimOrder::ReadFirst,
                ClaimOrder::InsertFirst,
                ClaimOrder::Learned,
            ];
            for (seed, order) in seeds.into_iter().zip(orders) {
                with_store(|plain $($extra)*| async move {
                    with_store(|coalesced $($extra)*| async move {
                        let coalesced = Arc::unwrap_or_clone(coalesced)
                            .with_claim_order(order)
                            .with_coalescing(true);
                        support::coalesce::same_answers_as_single_calls(
                            plain,
                            Arc::new(coalesced),
                            seed,
                            rounds,
                            calls,
                        )
                        .await;
                    })
                    .await;
                })
                .await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn same_answers_as_single_calls() {
            differential([1, 2, 3], 40, 24).await;
        }

        /// Rounds of ~1500 calls: more than one batch takes (512).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn same_answers_as_single_calls_in_large_batches() {
            differential([11, 12, 13], 2, 3000).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_failing_batch_fails_each_caller() {
            with_store(|store $($extra)*| async move {
                let store = Arc::new(Arc::unwrap_or_clone(store).with_coalescing(true));
                let rename = |from: &str, to: &str| {
                    let (pool, sql) = (
                        store.pool().clone(),
                        format!("ALTER TABLE {from} RENAME TO {to}"),
                    );
                    async move {
                        exec(&pool, sql).await;
                    }
                };
                let table = store.table().to_owned();
                let gone = format!("{table}_gone");
                support::coalesce::a_failing_batch_fails_each_caller(
                    store.clone(),
                    rename(&table, &gone),
                    rename(&gone, &table),
                )
                .await;
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn each_body_runs_once_across_stores() {
            for order in [ClaimOrder::ReadFirst, ClaimOrder::InsertFirst] {
                with_store(|store $($extra)*| async move {
                    let store = Arc::unwrap_or_clone(store).with_claim_order(order);
                    let a = Arc::new(store.clone().with_coalescing(true));
                    let b = Arc::new(store.with_coalescing(true));
                    support::coalesce::each_body_runs_once_across_stores(a, b).await;
                })
                .await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn batches_give_their_connections_back() {
            with_store(|store $($extra)*| async move {
                let store = Arc::unwrap_or_clone(store);
                let pool = store.pool().clone();
                support::coalesce::batches_give_their_connections_back(&store, &pool).await;
                let store = store.with_coalescing(true);
                support::coalesce::batches_give_their_connections_back(&store, &pool).await;
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cancelled_completes_break_nothing() {
            with_store(|store $($extra)*| async move {
                let store = Arc::unwrap_or_clone(store).with_coalescing(true);
                support::coalesce::cancelled_completes_break_nothing(Arc::new(store)).await;
            })
            .await;
        }
    };
}
pub(crate) use coalescing_tests;
