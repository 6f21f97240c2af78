//! Group commit for claims and completes ([`SqlStore::with_coalescing`]): while one
//! statement of a kind is in flight, the calls that come meanwhile queue; when it returns,
//! the queued ones go together as one batch (`batch.rs`), on a task of their own.
//!
//! A call that finds nothing in flight runs its own statements at once, on its own task,
//! exactly as without coalescing: a lone call waits for nobody. It then passes the baton:
//! whatever queued behind it goes as the next batch.
//!
//! The explicit batches of `Store::claim_batch` and `complete_batch` run as one batch of
//! the same jobs, at once and outside the queues, coalescing on or off.

use idem_core::store::{Busy, Claim, Output, Token};
use idem_core::{Fingerprint, Key, Store, StoreError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

use crate::batch::{self, Completion, shared_error};
use crate::cancel;
use crate::claim::NewClaim;
use crate::dialect::Conn;
use crate::store::{Common, SqlStore};
use crate::token;

/// Statements of one kind in flight at once: one. (Four measured the same on PostgreSQL
/// with 256 callers — BENCHMARKS.md — and one keeps the batches largest.)
const IN_FLIGHT: usize = 1;

/// The most calls one batch takes; more wait for the next.
const MAX_BATCH: usize = 512;

/// The largest output a coalesced `complete` takes; larger ones run their own statement.
/// (A batch is also cut to fit MySQL's `max_allowed_packet`: `batch::runs`.)
pub(crate) const MAX_BATCHED_OUTPUT: usize = 16 * 1024;

/// A store's two queues, shared by its clones.
#[derive(Default)]
pub(crate) struct Coalescer {
    claims: Queue<ClaimJob>,
    completes: Queue<CompleteJob>,
}

/// The calls of one kind waiting for the statement in flight.
struct Queue<J> {
    state: Mutex<QueueState<J>>,
}

struct QueueState<J> {
    /// Statements of this kind in flight (lone calls' or batches'), at most [`IN_FLIGHT`].
    in_flight: usize,
    waiting: Vec<J>,
}

impl<J> Default for Queue<J> {
    fn default() -> Self {
        Queue {
            state: Mutex::new(QueueState {
                in_flight: 0,
                waiting: Vec::new(),
            }),
        }
    }
}

impl<J> Queue<J> {
    /// `true` if nothing is in flight: the caller runs its own statement now (and must
    /// pass the baton). Else queues `job()` and returns `false`.
    fn lead_or_queue(&self, job: impl FnOnce() -> J) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.in_flight >= IN_FLIGHT {
            state.waiting.push(job());
            false
        } else {
            state.in_flight += 1;
            true
        }
    }

    /// The next batch (up to [`MAX_BATCH`] calls, oldest first); empty when none waits,
    /// and then nothing is in flight any more.
    fn next_batch(&self) -> Vec<J> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.waiting.is_empty() {
            state.in_flight -= 1;
            return Vec::new();
        }
        if state.waiting.len() <= MAX_BATCH {
            return std::mem::take(&mut state.waiting);
        }
        let rest = state.waiting.split_off(MAX_BATCH);
        std::mem::replace(&mut state.waiting, rest)
    }
}

/// One kind of coalesced call.
trait Job: Sized + Send + 'static {
    fn queue(coalescer: &Coalescer) -> &Queue<Self>;

    /// Runs `jobs` as one batch and answers each.
    fn run<D: Common>(store: &SqlStore<D>, jobs: Vec<Self>) -> impl Future<Output = ()> + Send;
}

/// Held by whoever runs the statement in flight; dropped — when it returns, and also when
/// a lone caller is cancelled or a batch panics — it sends what queued meanwhile as the
/// next batch, on a task, or marks the queue idle.
struct Baton<'a, D: Common, J: Job> {
    store: &'a SqlStore<D>,
    coalescer: &'a Coalescer,
    kind: std::marker::PhantomData<J>,
}

impl<'a, D: Common, J: Job> Baton<'a, D, J> {
    fn new(store: &'a SqlStore<D>, coalescer: &'a Coalescer) -> Self {
        Baton {
            store,
            coalescer,
            kind: std::marker::PhantomData,
        }
    }
}

impl<D: Common, J: Job> Drop for Baton<'_, D, J> {
    fn drop(&mut self) {
        loop {
            let jobs = J::queue(self.coalescer).next_batch();
            if jobs.is_empty() {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                // No runtime to run them on: dropping them answers their callers with an
                // error; then the next ones, until none waits.
                continue;
            };
            let store = self.store.clone();
            runtime.spawn(async move {
                let Some(coalescer) = store.coalescer.clone() else {
                    return;
                };
                let _baton = Baton::<D, J>::new(&store, &coalescer);
                J::run(&store, jobs).await;
            });
            return;
        }
    }
}

/// Runs `alone` (the call's own statements) if nothing is in flight, passing the baton
/// afterwards; else queues `job` and returns `None`.
async fn lead<D: Common, J: Job, T>(
    store: &SqlStore<D>,
    coalescer: &Coalescer,
    job: impl FnOnce() -> J,
    alone: impl Future<Output = T>,
) -> Option<T> {
    if !J::queue(coalescer).lead_or_queue(job) {
        return None;
    }
    let _baton = Baton::<D, J>::new(store, coalescer);
    Some(alone.await)
}

// ---------------------------------------------------------------------------------------
// Claims

struct ClaimJob {
    key: Key,
    fingerprint: Fingerprint,
    lease: Duration,
    token: i64,
    reply: oneshot::Sender<Result<Claim, StoreError>>,
}

impl ClaimJob {
    fn claim(&self) -> NewClaim<'_> {
        NewClaim {
            key: &self.key,
            fingerprint: &self.fingerprint,
            lease: self.lease,
            token: self.token,
        }
    }
}

/// A claim, coalesced with the claims of other tasks while one is in flight. `alone` is
/// the store's own claim (cancel-safe on its connection).
pub(crate) async fn claim<D: Common>(
    store: &SqlStore<D>,
    coalescer: &Coalescer,
    new: NewClaim<'_>,
    alone: impl Future<Output = Result<Claim, StoreError>>,
) -> Result<Claim, StoreError> {
    // The channel and the copy of the key are made only for a call that queues.
    let mut answer = None;
    let job = || {
        let (reply, receiver) = oneshot::channel();
        answer = Some(receiver);
        ClaimJob {
            key: new.key.clone(),
            fingerprint: *new.fingerprint,
            lease: new.lease,
            token: new.token,
            reply,
        }
    };
    if let Some(claimed) = lead::<D, ClaimJob, _>(store, coalescer, job, alone).await {
        return claimed;
    }
    let mut answer = Answer {
        answer,
        store,
        key: new.key,
    };
    answer.wait().await
}

/// A queued claim's answer, to come. Dropped before it came (the caller was cancelled),
/// it makes sure no claim is left that nobody knows of: either the batch finds the caller
/// gone when it answers, and releases the claim, or the claim was already sent, and this
/// releases it.
struct Answer<'a, D: Common> {
    answer: Option<oneshot::Receiver<Result<Claim, StoreError>>>,
    store: &'a SqlStore<D>,
    key: &'a Key,
}

impl<D: Common> Answer<'_, D> {
    async fn wait(&mut self) -> Result<Claim, StoreError> {
        let Some(answer) = self.answer.as_mut() else {
            return Err(StoreError::backend("claim", "answered already"));
        };
        let claimed = answer.await;
        self.answer = None;
        claimed.unwrap_or_else(|_| Err(StoreError::backend("claim", "the batch was dropped")))
    }
}

impl<D: Common> Drop for Answer<'_, D> {
    fn drop(&mut self) {
        if let Some(mut answer) = self.answer.take() {
            // From here on the batch cannot send; if it did before, the claim is here.
            answer.close();
            if let Ok(Ok(Claim::Claimed(token))) = answer.try_recv() {
                cancel::release_in_background(self.store, self.key, token);
            }
        }
    }
}

impl Job for ClaimJob {
    fn queue(coalescer: &Coalescer) -> &Queue<Self> {
        &coalescer.claims
    }

    async fn run<D: Common>(store: &SqlStore<D>, jobs: Vec<Self>) {
        let mut conn = match store.batch_connection("claim").await {
            Ok(conn) => conn,
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(shared(&e)));
                }
                return;
            }
        };
        let claims: Vec<NewClaim<'_>> = jobs.iter().map(ClaimJob::claim).collect();
        let replies = claim_all(store, &mut conn, &claims).await;
        drop(claims);
        if claims_answered(&replies) {
            store.keep_warm(conn);
        }
        for (job, reply) in jobs.into_iter().zip(replies) {
            // The caller is gone (cancelled): release the claim it will never know of —
            // on a task, so that the next batch does not wait for these commits.
            if let Err(Ok(Claim::Claimed(token))) = job.reply.send(reply) {
                cancel::release_in_background(store, &job.key, token);
            }
        }
    }
}

/// The answers to `claims` as one batch on `conn`, in order, each what its own claim
/// would have answered (and learned from by the store's order).
async fn claim_all<D: Common>(
    store: &SqlStore<D>,
    conn: &mut Conn<D>,
    claims: &[NewClaim<'_>],
) -> Vec<Result<Claim, StoreError>> {
    // The first claim of each key goes into the batch; later ones of the same key are
    // answered as a call right after it would be: the record it found, or in progress.
    let mut first: HashMap<&[u8], usize> = HashMap::new();
    let mut primaries = Vec::new();
    let mut followers = Vec::new();
    for (i, claim) in claims.iter().enumerate() {
        match first.get(claim.digest()) {
            Some(&p) => followers.push((i, p)),
            None => {
                first.insert(claim.digest(), primaries.len());
                primaries.push(i);
            }
        }
    }
    let batch: Vec<NewClaim<'_>> = primaries.iter().map(|&i| claims[i]).collect();
    let read_first = store.order.read_first();
    let mut answers: Vec<Option<Result<Claim, StoreError>>> = if batch.len() == 1 {
        vec![None]
    } else {
        match batch::claims(store, conn, &batch, read_first).await {
            Ok(answers) => answers,
            Err(e) => {
                // The insert may have landed before the error: nobody will own those
                // claims, so release them (fenced by their tokens).
                for claim in &batch {
                    let token = Token::new(claim.token as u64);
                    cancel::release_in_background(store, claim.key, token);
                }
                batch
                    .iter()
                    .map(|_| Some(Err(shared_error("claim", &e))))
                    .collect()
            }
        }
    };
    // What the batch did not settle (a batch of one; a takeover; a record that changed
    // between the statements) runs the claim's own statements, on this connection.
    for (claim, answer) in batch.iter().zip(&mut answers) {
        if answer.is_none() {
            *answer = Some(D::claim(store, conn, *claim, read_first).await);
        }
    }
    let answers: Vec<Result<Claim, StoreError>> = answers.into_iter().flatten().collect();
    let mut replies: Vec<Option<Result<Claim, StoreError>>> = claims.iter().map(|_| None).collect();
    for &(i, p) in &followers {
        replies[i] = Some(follow(&answers[p], &claims[primaries[p]]));
    }
    for (&i, answer) in primaries.iter().zip(answers) {
        replies[i] = Some(answer);
    }
    replies
        .into_iter()
        .flatten()
        .map(|reply| store.order.learn(reply))
        .collect()
}

/// What a later claim of the same key in one batch gets: what a claim right after the
/// first one would have found.
fn follow(first: &Result<Claim, StoreError>, claim: &NewClaim<'_>) -> Result<Claim, StoreError> {
    match first {
        Ok(Claim::Claimed(_)) => Ok(Claim::InProgress(Busy {
            fingerprint: *claim.fingerprint,
            lease_remaining: Some(claim.lease),
            waiter: None,
        })),
        Ok(Claim::Completed(record)) => Ok(Claim::Completed(record.clone())),
        Ok(Claim::InProgress(busy)) => Ok(Claim::InProgress(Busy {
            fingerprint: busy.fingerprint,
            lease_remaining: busy.lease_remaining,
            waiter: None,
        })),
        Err(e) => Err(StoreError::backend("claim", e.to_string())),
    }
}

// ---------------------------------------------------------------------------------------
// Completes

struct CompleteJob {
    key: Key,
    token: Token,
    output: Output,
    ttl: Duration,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// A `complete`, coalesced with those of other tasks while one is in flight. `alone` is
/// the store's own. (A caller cancelled while its `complete` is queued leaves it to the
/// batch, as a statement already sent would be: its claim was released on drop or is, so
/// one of the two finds the other's work done, as without coalescing.)
pub(crate) async fn complete<D: Common>(
    store: &SqlStore<D>,
    coalescer: &Coalescer,
    (key, token, output, ttl): (&Key, Token, &Output, Duration),
    alone: impl Future<Output = Result<(), StoreError>>,
) -> Result<(), StoreError> {
    let mut answer = None;
    let job = || {
        let (reply, receiver) = oneshot::channel();
        answer = Some(receiver);
        CompleteJob {
            key: key.clone(),
            token,
            output: output.clone(),
            ttl,
            reply,
        }
    };
    if let Some(done) = lead::<D, CompleteJob, _>(store, coalescer, job, alone).await {
        return done;
    }
    match answer {
        Some(answer) => answer
            .await
            .unwrap_or_else(|_| Err(StoreError::backend("complete", "the batch was dropped"))),
        None => Err(StoreError::backend("complete", "neither run nor queued")),
    }
}

impl Job for CompleteJob {
    fn queue(coalescer: &Coalescer) -> &Queue<Self> {
        &coalescer.completes
    }

    async fn run<D: Common>(store: &SqlStore<D>, jobs: Vec<Self>) {
        let mut conn = match store.batch_connection("complete").await {
            Ok(conn) => conn,
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(shared(&e)));
                }
                return;
            }
        };
        let records: Vec<_> = jobs
            .iter()
            .map(|job| (&job.key, job.token, &job.output, job.ttl))
            .collect();
        let done = complete_all(store, &mut conn, &records).await;
        drop(records);
        if completes_answered(&done) {
            store.keep_warm(conn);
        }
        for (job, done) in jobs.into_iter().zip(done) {
            let _ = job.reply.send(done);
        }
    }
}

/// The answers to `records` (key, token, output, TTL) as one batch on `conn`, in order,
/// each what its own `complete` would have answered: one multi-row fenced `UPDATE` per run
/// that fits a statement; a second record of one key (a retry racing its first try) by
/// its own statement after it, as it would have run without a batch.
async fn complete_all<D: Common>(
    store: &SqlStore<D>,
    conn: &mut Conn<D>,
    records: &[(&Key, Token, &Output, Duration)],
) -> Vec<Result<(), StoreError>> {
    let mut seen = std::collections::HashSet::new();
    let (batched, later): (Vec<usize>, Vec<usize>) =
        (0..records.len()).partition(|&i| seen.insert(*records[i].0.digest()));
    let items: Vec<Completion<'_>> = batched
        .iter()
        .map(|&i| {
            let (key, token, output, ttl) = records[i];
            Completion::new(key, token, output, ttl)
        })
        .collect();
    let done = match &batched[..] {
        &[i] => {
            let (key, token, output, ttl) = records[i];
            vec![D::complete_on(store, conn, key, token, output.clone(), ttl).await]
        }
        _ => {
            // Half what a statement may carry: the rest is room for the statement.
            let budget = store.dialect.max_output_len() / 2;
            let mut done = Vec::with_capacity(items.len());
            for run in batch::runs(&items, budget) {
                match batch::completes(store, conn, run).await {
                    Ok(run) => done.extend(run),
                    Err(e) => done.extend(run.iter().map(|_| Err(shared_error("complete", &e)))),
                }
            }
            done
        }
    };
    let mut answers: Vec<Option<Result<(), StoreError>>> = records.iter().map(|_| None).collect();
    for (&i, done) in batched.iter().zip(done) {
        answers[i] = Some(done);
    }
    for i in later {
        let (key, token, output, ttl) = records[i];
        answers[i] = Some(D::complete_on(store, conn, key, token, output.clone(), ttl).await);
    }
    answers.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------
// Explicit batches

/// [`Store::claim_batch`](idem_core::Store::claim_batch): `claims` as one batch, on a
/// connection that guards it: if the caller is dropped before the answers, every claim of
/// the batch is released on that connection after whatever statement it left in flight.
pub(crate) async fn claim_batch<D: Common>(
    store: &SqlStore<D>,
    claims: &[(&Key, &Fingerprint)],
    lease: Duration,
) -> Vec<Result<Claim, StoreError>> {
    // Nothing to claim: no connection to take.
    if claims.is_empty() {
        return Vec::new();
    }
    let claims: Vec<NewClaim<'_>> = claims
        .iter()
        .map(|&(key, fingerprint)| NewClaim {
            key,
            fingerprint,
            lease,
            token: token::fresh(),
        })
        .collect();
    let conn = match store.batch_connection("claim").await {
        Ok(conn) => conn,
        Err(e) => return claims.iter().map(|_| Err(shared(&e))).collect(),
    };
    let mut guard = cancel::ClaimConnection::new(store, &claims, conn);
    let Some(conn) = guard.conn() else {
        return claims
            .iter()
            .map(|_| Err(StoreError::backend("claim", "no connection")))
            .collect();
    };
    let answers = claim_all(store, conn, &claims).await;
    if let Some(conn) = guard.disarm()
        && claims_answered(&answers)
    {
        store.keep_warm(conn);
    }
    answers
}

/// [`Store::complete_batch`](idem_core::Store::complete_batch): `records` as one batch on
/// one connection; an output over [`MAX_BATCHED_OUTPUT`] by its own statement.
pub(crate) async fn complete_batch<D: Common>(
    store: &SqlStore<D>,
    records: &[(&Key, Token, Output)],
    ttl: Duration,
) -> Vec<Result<(), StoreError>> {
    let (batched, large): (Vec<usize>, Vec<usize>) =
        (0..records.len()).partition(|&i| records[i].2.bytes.len() <= MAX_BATCHED_OUTPUT);
    let mut answers: Vec<Option<Result<(), StoreError>>> = records.iter().map(|_| None).collect();
    if !batched.is_empty() {
        let items: Vec<_> = batched
            .iter()
            .map(|&i| (records[i].0, records[i].1, &records[i].2, ttl))
            .collect();
        let done = match store.batch_connection("complete").await {
            Ok(mut conn) => {
                let done = complete_all(store, &mut conn, &items).await;
                if completes_answered(&done) {
                    store.keep_warm(conn);
                }
                done
            }
            Err(e) => items.iter().map(|_| Err(shared(&e))).collect(),
        };
        for (&i, done) in batched.iter().zip(done) {
            answers[i] = Some(done);
        }
    }
    for i in large {
        let (key, token, output) = &records[i];
        answers[i] = Some(Store::complete(store, key, *token, output.clone(), ttl).await);
    }
    answers.into_iter().flatten().collect()
}

/// Whether a batch's statements went well — every claim answered — so that its connection
/// is fit for the next batch's statements (`warm.rs`). (No batch statement is sent for no
/// keys: `claim_batch` returns early, and `read_in` sends nothing.)
fn claims_answered(answers: &[Result<Claim, StoreError>]) -> bool {
    answers.iter().all(Result::is_ok)
}

/// The same for completes, where a lost lease is an answer too.
fn completes_answered(answers: &[Result<(), StoreError>]) -> bool {
    answers
        .iter()
        .all(|done| matches!(done, Ok(()) | Err(StoreError::LeaseLost)))
}

/// A store error for each of a batch's calls (a `StoreError` is not `Clone`).
fn shared(error: &StoreError) -> StoreError {
    match error {
        StoreError::Backend { op, source } => StoreError::backend(op, source.to_string()),
        other => StoreError::backend("batch", other.to_string()),
    }
}
