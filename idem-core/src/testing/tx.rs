//! Transactional checks: [`TxStore`]'s `claim_in`, `complete_in` and `release_in` inside a
//! caller's transaction, which commits them with the caller's own writes or rolls them back.
//!
//! A backend runs them with a [`TxHarness`], which begins, commits and rolls back
//! transactions of its type, all at once with [`run_all_tx`], one test per check with
//! [`tx_conformance_tests!`](crate::tx_conformance_tests), or check by check.
//!
//! The checks never run a plain store operation while one of their transactions is open
//! (SQLite would make it wait for that transaction), except where a check says so.

use super::*;
use crate::TxStore;

/// How long a `claim_in` may wait for a concurrent transaction holding its key.
const WAIT: Duration = Duration::from_secs(10);

/// How long a check lets a claim that should be waiting run before it looks.
const WAITING: Duration = Duration::from_millis(200);

/// Transactions of one backend, for the transactional checks: the test of a [`TxStore`]
/// implements it for the store's transaction type.
///
/// Each method panics if the database refuses (a harness is test code).
///
/// ```ignore
/// struct Transactions(sqlx::PgPool);
///
/// impl idem::testing::TxHarness for Transactions {
///     type Tx = sqlx::Transaction<'static, sqlx::Postgres>;
///     async fn begin(&self) -> Self::Tx { self.0.begin().await.unwrap() }
///     async fn commit(&self, tx: Self::Tx) { tx.commit().await.unwrap() }
///     async fn rollback(&self, tx: Self::Tx) { tx.rollback().await.unwrap() }
/// }
/// ```
pub trait TxHarness: Send + Sync + 'static {
    /// The transaction type the store works in (`sqlx::Transaction<'static, DB>`).
    type Tx: Send + 'static;

    /// Begins a transaction as transactional mode asks its users to: where the database
    /// serializes write transactions (SQLite), as a writer (`BEGIN IMMEDIATE`), so that a
    /// concurrent duplicate waits here.
    fn begin(&self) -> impl Future<Output = Self::Tx> + Send;

    /// Commits `tx`.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = ()> + Send;

    /// Rolls `tx` back.
    fn rollback(&self, tx: Self::Tx) -> impl Future<Output = ()> + Send;
}

/// Runs every transactional check against `store`, one after another, with transactions
/// from `transactions`.
///
/// Panics (with the check's name in the message) at the first check that fails. Needs a
/// multi-threaded tokio runtime, e.g. `#[tokio::test(flavor = "multi_thread")]`.
pub async fn run_all_tx<S, H>(store: Arc<S>, transactions: Arc<H>)
where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized + 'static,
{
    macro_rules! run_each {
        ($store:ident, $transactions:ident $($check:ident),* $(,)?) => {
            $($check(&$store, &$transactions).await;)*
        };
    }
    crate::__tx_conformance_checks!((run_each)(store, transactions));
}

async fn claim_in<S, H>(
    store: &S,
    tx: &mut H::Tx,
    key: &Key,
    fp: &Fingerprint,
    lease: Duration,
) -> Result<Claim, StoreError>
where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized,
{
    store.claim_in(tx, key, fp, lease, WAIT).await
}

/// A claim made with `claim_in` and committed is an ordinary claim: later claims, plain or
/// in a transaction, see it in progress (with its fingerprint), and its token completes it.
pub async fn tx_committed_claim_is_in_progress<S, H>(store: &Arc<S>, transactions: &Arc<H>)
where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized + 'static,
{
    const CHECK: &str = "tx_committed_claim_is_in_progress";
    let key = new_key(CHECK);
    let fp = fingerprint();
    let mut tx = transactions.begin().await;
    let token = claimed(
        claim_in::<S, H>(store, &mut tx, &key, &fp, LONG).await,
        CHECK,
        "claim_in of a fresh key",
    );
    transactions.commit(tx).await;

    let busy = in_progress(
        claim(&**store, &key, &fp, LONG).await,
        CHECK,
        "plain claim after the commit",
    );
    assert_eq!(
        busy.fingerprint, fp,
        "[{CHECK}] the committed claim's fingerprint"
    );
    if let Some(remaining) = busy.lease_remaining {
        assert!(
            remaining <= LONG,
            "[{CHECK}] lease_remaining {remaining:?} is more than the {LONG:?} lease"
        );
    }
    let mut tx = transactions.begin().await;
    let busy = in_progress(
        claim_in::<S, H>(store, &mut tx, &key, &fp, LONG).await,
        CHECK,
        "claim_in in a later transaction",
    );
    transactions.rollback(tx).await;
    assert_eq!(
        busy.fingerprint, fp,
        "[{CHECK}] the committed claim's fingerprint, in a transaction"
    );

    let out = output(Outcome::Ok, b"completed outside the transaction".to_vec());
    ok(
        store.complete(&key, token, out.clone(), LONG).await,
        CHECK,
        "plain complete with the token claim_in returned",
    );
    let record = completed(
        claim(&**store, &key, &fp, LONG).await,
        CHECK,
        "replay after the plain complete",
    );
    assert_record(
        &record,
        &Record {
            fingerprint: fp,
            output: out,
        },
        CHECK,
        "replay after the plain complete",
    );
}

/// `claim_in`, `complete_in` and a commit record the output: later claims, plain or in a
/// transaction, replay it byte for byte with its outcome (an empty `Err` too).
pub async fn tx_committed_complete_replays<S, H>(store: &Arc<S>, transactions: &Arc<H>)
where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized + 'static,
{
    const CHECK: &str = "tx_committed_complete_replays";
    for (what, out) in [
        (
            "an Ok output",
            output(Outcome::Ok, b"\x01recorded in a transaction".to_vec()),
        ),
        ("an empty Err output", output(Outcome::Err, Vec::new())),
    ] {
        let key = new_key(CHECK);
        let fp = fingerprint();
        let mut tx = transactions.begin().await;
        let token = claimed(
            claim_in::<S, H>(store, &mut tx, &key, &fp, LONG).await,
            CHECK,
            &format!("claim_in for {what}"),
        );
        ok(
            store
                .complete_in(&mut tx, &key, token, out.clone(), LONG)
                .await,
            CHECK,
            &format!("complete_in of {what}"),
        );
        transactions.commit(tx).await;
        let expected = Record {
            fingerprint: fp,
            output: out,
        };
        let what = format!("replay of {what} committed in a transaction");
        let record = completed(claim(&**store, &key, &fp, LONG).await, CHECK, &what);
        assert_record(&record, &expected, CHECK, &what);
        let mut tx = transactions.begin().await;
        let record = completed(
            claim_in::<S, H>(store, &mut tx, &key, &fp, LONG).await,
            CHECK,
            &format!("{what}, in a later transaction"),
        );
        transactions.rollback(tx).await;
        assert_record(
            &record,
            &expected,
            CHECK,
            &format!("{what}, in a later transaction"),
        );
    }
}

/// A rolled-back transaction leaves nothing: not its claim, not its recorded output.
pub async fn tx_rollback_leaves_nothing<S, H>(store: &Arc<S>, transactions: &Arc<H>)
where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized + 'static,
{
    const CHECK: &str = "tx_rollback_leaves_nothing";
    for complete in [false, true] {
        let what = if complete {
            "claim_in and complete_in"
        } else {
            "claim_in"
        };
        let key = new_key(CHECK);
        let mut tx = transactions.begin().await;
        let token = claimed(
            claim_in::<S, H>(store, &mut tx, &key, &fingerprint(), LONG).await,
            CHECK,
            &format!("{what}: claim_in of a fresh key"),
        );
        if complete {
            ok(
                store
                    .complete_in(
                        &mut tx,
                        &key,
                        token,
                        output(Outcome::Ok, b"rolled back".to_vec()),
                        LONG,
                    )
                    .await,
                CHECK,
                "complete_in before the rollback",
            );
        }
        transactions.rollback(tx).await;
        let fp = fingerprint();
        let new = claimed(
            claim(&**store, &key, &fp, LONG).await,
            CHECK,
            &format!("plain claim after {what} rolled back"),
        );
        if new != token {
            lease_lost(
                store
                    .complete(&key, token, output(Outcome::Ok, b"stale".to_vec()), LONG)
                    .await,
                CHECK,
                &format!("complete with the token of {what} rolled back"),
            );
        }
        ok(
            store.release(&key, new).await,
            CHECK,
            "release of the plain claim",
        );
    }
}

/// A plain claim of a key that an open transaction has claimed waits for that transaction
/// (or reports the key in progress); never a second owner. Cancelled while it waits, and
/// the transaction rolled back, it leaves no claim behind: the key is claimable again
/// within a second (a claim the store applied after its caller left is released by the
/// store).
pub async fn tx_cancelled_plain_claim_leaves_nothing<S, H>(store: &Arc<S>, transactions: &Arc<H>)
where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized + 'static,
{
    const CHECK: &str = "tx_cancelled_plain_claim_leaves_nothing";
    let key = new_key(CHECK);
    let fp = fingerprint();
    let mut tx = transactions.begin().await;
    claimed(
        claim_in::<S, H>(store, &mut tx, &key, &fp, LONG).await,
        CHECK,
        "claim_in of a fresh key",
    );
    // The one plain operation while a transaction is open: it is meant to wait.
    match tokio::time::timeout(Duration::from_millis(300), claim(&**store, &key, &fp, LONG)).await {
        Err(_) | Ok(Ok(Claim::InProgress(_))) => {}
        Ok(other) => panic!(
            "[{CHECK}] a plain claim of a key claimed in an open transaction must wait for \
             it (or report it in progress), got {}",
            brief(&other)
        ),
    }
    transactions.rollback(tx).await;
    let started = std::time::Instant::now();
    loop {
        match claim(&**store, &key, &fingerprint(), LONG).await {
            Ok(Claim::Claimed(_)) => return,
            Ok(Claim::InProgress(_)) if started.elapsed() < Duration::from_secs(1) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!(
                "[{CHECK}] the key must be claimable within a second of the rollback (no \
                 claim left by the cancelled plain claim), got {} after {:?}",
                brief(&other),
                started.elapsed()
            ),
        }
    }
}

/// `release_in` and a commit leave nothing: the key is claimable again. The released token
/// is refused from then on in the transaction, and a claim committed earlier can be
/// released inside a later transaction.
pub async fn tx_release_leaves_nothing<S, H>(store: &Arc<S>, transactions: &Arc<H>)
where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized + 'static,
{
    const CHECK: &str = "tx_release_leaves_nothing";
    let key = new_key(CHECK);
    let mut tx = transactions.begin().await;
    let token = claimed(
        claim_in::<S, H>(store, &mut tx, &key, &fingerprint(), LONG).await,
        CHECK,
        "claim_in of a fresh key",
    );
    ok(
        store.release_in(&mut tx, &key, token).await,
        CHECK,
        "release_in by the owner",
    );
    lease_lost(
        store.release_in(&mut tx, &key, token).await,
        CHECK,
        "release_in again with the released token",
    );
    lease_lost(
        store
            .complete_in(
                &mut tx,
                &key,
                token,
                output(Outcome::Ok, b"released".to_vec()),
                LONG,
            )
            .await,
        CHECK,
        "complete_in with the released token",
    );
    transactions.commit(tx).await;
    claimed(
        claim(&**store, &key, &fingerprint(), LONG).await,
        CHECK,
        "plain claim after release_in was committed",
    );

    // A plain claim, committed before, released inside a transaction.
    let key = new_key(CHECK);
    let token = claimed(
        claim(&**store, &key, &fingerprint(), LONG).await,
        CHECK,
        "plain claim of a fresh key",
    );
    let mut tx = transactions.begin().await;
    ok(
        store.release_in(&mut tx, &key, token).await,
        CHECK,
        "release_in of a plain claim",
    );
    transactions.commit(tx).await;
    claimed(
        claim(&**store, &key, &fingerprint(), LONG).await,
        CHECK,
        "plain claim after release_in of a plain claim was committed",
    );
}

/// `complete_in` and `release_in` are fenced by the token: another token — forged, on a key
/// without a record, or against a claim held outside the transaction — is
/// `Err(LeaseLost)` and changes nothing. `complete_in` is idempotent for its owner: again
/// with the owner's token it is `Ok` and the record stays as first written (a retry after
/// a lost reply); `release_in` after it is refused.
pub async fn tx_complete_in_is_fenced<S, H>(store: &Arc<S>, transactions: &Arc<H>)
where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized + 'static,
{
    const CHECK: &str = "tx_complete_in_is_fenced";
    let forged = |owner: Token| {
        [
            Token::new(owner.get().wrapping_add(1)),
            Token::new(owner.get() ^ (1 << 63)),
            Token::new(!owner.get()),
        ]
    };
    let intruder = output(Outcome::Ok, b"intruder".to_vec());
    let key = new_key(CHECK);
    let fp = fingerprint();
    let mut tx = transactions.begin().await;
    let owner = claimed(
        claim_in::<S, H>(store, &mut tx, &key, &fp, LONG).await,
        CHECK,
        "claim_in of a fresh key",
    );
    for wrong in forged(owner) {
        let what = format!("token {} while {} owns the claim", wrong.get(), owner.get());
        lease_lost(
            store
                .complete_in(&mut tx, &key, wrong, intruder.clone(), LONG)
                .await,
            CHECK,
            &format!("complete_in with {what}"),
        );
        lease_lost(
            store.release_in(&mut tx, &key, wrong).await,
            CHECK,
            &format!("release_in with {what}"),
        );
    }
    let first = output(Outcome::Ok, b"\x01first".to_vec());
    ok(
        store
            .complete_in(&mut tx, &key, owner, first.clone(), LONG)
            .await,
        CHECK,
        "complete_in by the owner after refused operations",
    );
    ok(
        store
            .complete_in(
                &mut tx,
                &key,
                owner,
                output(Outcome::Ok, b"\x01second".to_vec()),
                LONG,
            )
            .await,
        CHECK,
        "complete_in again with the owner's token (a retry after a lost reply)",
    );
    for wrong in forged(owner) {
        lease_lost(
            store
                .complete_in(&mut tx, &key, wrong, intruder.clone(), LONG)
                .await,
            CHECK,
            &format!("complete_in with token {} after completion", wrong.get()),
        );
    }
    lease_lost(
        store.release_in(&mut tx, &key, owner).await,
        CHECK,
        "release_in by the owner after completion",
    );
    transactions.commit(tx).await;
    let record = completed(
        claim(&**store, &key, &fp, LONG).await,
        CHECK,
        "replay after the commit",
    );
    assert_record(
        &record,
        &Record {
            fingerprint: fp,
            output: first,
        },
        CHECK,
        "replay of the first output (complete_in again keeps it)",
    );

    // A key that has no record at all.
    let absent = new_key(CHECK);
    let mut tx = transactions.begin().await;
    lease_lost(
        store
            .complete_in(&mut tx, &absent, owner, intruder.clone(), LONG)
            .await,
        CHECK,
        "complete_in on a key that has no record",
    );
    lease_lost(
        store.release_in(&mut tx, &absent, owner).await,
        CHECK,
        "release_in on a key that has no record",
    );
    transactions.commit(tx).await;
    claimed(
        claim(&**store, &absent, &fingerprint(), LONG).await,
        CHECK,
        "claim of a key after refused operations on it (nothing may have been written)",
    );

    // A claim held outside the transaction.
    let held = new_key(CHECK);
    let fp = fingerprint();
    let holder = claimed(
        claim(&**store, &held, &fp, LONG).await,
        CHECK,
        "plain claim of a fresh key",
    );
    let mut tx = transactions.begin().await;
    for wrong in forged(holder) {
        let what = format!(
            "token {} while {} holds the claim",
            wrong.get(),
            holder.get()
        );
        lease_lost(
            store
                .complete_in(&mut tx, &held, wrong, intruder.clone(), LONG)
                .await,
            CHECK,
            &format!("complete_in with {what}"),
        );
        lease_lost(
            store.release_in(&mut tx, &held, wrong).await,
            CHECK,
            &format!("release_in with {what}"),
        );
    }
    transactions.commit(tx).await;
    let busy = in_progress(
        claim(&**store, &held, &fingerprint(), LONG).await,
        CHECK,
        "claim after refused operations on a claim held outside the transaction",
    );
    assert_eq!(
        busy.fingerprint, fp,
        "[{CHECK}] the claim must still be the holder's"
    );
    ok(
        store
            .complete(&held, holder, output(Outcome::Ok, b"holder".to_vec()), LONG)
            .await,
        CHECK,
        "complete by the holder",
    );
}

/// `claim_in` with another request's fingerprint reports the stored one — of a claim in
/// progress and of a completed record — so that the caller sees the payload mismatch.
pub async fn tx_claim_in_reports_the_stored_fingerprint<S, H>(store: &Arc<S>, transactions: &Arc<H>)
where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized + 'static,
{
    const CHECK: &str = "tx_claim_in_reports_the_stored_fingerprint";
    let (busy_key, done_key) = (new_key(CHECK), new_key(CHECK));
    let fp = fingerprint();
    let mut tx = transactions.begin().await;
    claimed(
        claim_in::<S, H>(store, &mut tx, &busy_key, &fp, LONG).await,
        CHECK,
        "claim_in of a key left in progress",
    );
    let token = claimed(
        claim_in::<S, H>(store, &mut tx, &done_key, &fp, LONG).await,
        CHECK,
        "claim_in of a key to complete",
    );
    let out = output(Outcome::Ok, b"\x01first payload".to_vec());
    ok(
        store
            .complete_in(&mut tx, &done_key, token, out.clone(), LONG)
            .await,
        CHECK,
        "complete_in",
    );
    transactions.commit(tx).await;

    let other = fingerprint();
    let mut tx = transactions.begin().await;
    let busy = in_progress(
        claim_in::<S, H>(store, &mut tx, &busy_key, &other, LONG).await,
        CHECK,
        "claim_in with another payload of a key in progress",
    );
    let record = completed(
        claim_in::<S, H>(store, &mut tx, &done_key, &other, LONG).await,
        CHECK,
        "claim_in with another payload of a completed key",
    );
    transactions.rollback(tx).await;
    assert_eq!(
        busy.fingerprint, fp,
        "[{CHECK}] claim_in must report the fingerprint of the claim in progress, not the \
         caller's"
    );
    assert_record(
        &record,
        &Record {
            fingerprint: fp,
            output: out,
        },
        CHECK,
        "claim_in with another payload of a completed key must report the stored record",
    );
}

/// A `claim_in` of a key that another open transaction has claimed waits for that
/// transaction to end (SQLite: at `BEGIN IMMEDIATE`); then it replays what the first
/// committed, or claims the key if the first rolled back.
pub async fn tx_duplicate_waits_for_the_first_transaction<S, H>(
    store: &Arc<S>,
    transactions: &Arc<H>,
) where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized + 'static,
{
    const CHECK: &str = "tx_duplicate_waits_for_the_first_transaction";
    for commit in [true, false] {
        let end = if commit { "commits" } else { "rolls back" };
        let key = new_key(CHECK);
        let fp = fingerprint();
        let mut first = transactions.begin().await;
        let token = claimed(
            claim_in::<S, H>(store, &mut first, &key, &fp, LONG).await,
            CHECK,
            "the first transaction's claim_in",
        );
        let second = tokio::spawn({
            let (store, transactions, key) = (store.clone(), transactions.clone(), key.clone());
            async move {
                let mut tx = transactions.begin().await;
                let claim = claim_in::<S, H>(&*store, &mut tx, &key, &fp, LONG).await;
                transactions.rollback(tx).await;
                claim
            }
        });
        tokio::time::sleep(WAITING).await;
        let waited = !second.is_finished();
        let out = output(Outcome::Ok, b"\x01the first transaction's".to_vec());
        if commit {
            ok(
                store
                    .complete_in(&mut first, &key, token, out.clone(), LONG)
                    .await,
                CHECK,
                "the first transaction's complete_in",
            );
            transactions.commit(first).await;
        } else {
            transactions.rollback(first).await;
        }
        let claim = match second.await {
            Ok(claim) => claim,
            Err(e) => panic!("[{CHECK}] the second transaction's task failed: {e}"),
        };
        assert!(
            waited,
            "[{CHECK}] a claim_in of a key claimed in an open transaction must wait for that \
             transaction; it returned {} at once (before the first {end})",
            brief(&claim)
        );
        let what = format!("the second claim_in, after the first transaction {end}");
        if commit {
            let record = completed(claim, CHECK, &what);
            assert_record(
                &record,
                &Record {
                    fingerprint: fp,
                    output: out,
                },
                CHECK,
                &what,
            );
        } else {
            claimed(claim, CHECK, &what);
        }
    }
}

/// `claim_in` takes over an expired record — a claim whose lease ran out, a completed
/// record past its TTL — as a plain claim does; the old claim's token is refused.
pub async fn tx_claim_in_takes_over_expired_records<S, H>(store: &Arc<S>, transactions: &Arc<H>)
where
    H: TxHarness,
    S: TxStore<H::Tx> + ?Sized + 'static,
{
    const CHECK: &str = "tx_claim_in_takes_over_expired_records";
    let (lapsed, done) = (new_key(CHECK), new_key(CHECK));
    let mut tx = transactions.begin().await;
    let old = claimed(
        claim_in::<S, H>(store, &mut tx, &lapsed, &fingerprint(), SHORT).await,
        CHECK,
        "claim_in with a 300 ms lease",
    );
    let token = claimed(
        claim_in::<S, H>(store, &mut tx, &done, &fingerprint(), LONG).await,
        CHECK,
        "claim_in of a key to complete",
    );
    ok(
        store
            .complete_in(
                &mut tx,
                &done,
                token,
                output(Outcome::Ok, b"expires".to_vec()),
                SHORT,
            )
            .await,
        CHECK,
        "complete_in with a 300 ms TTL",
    );
    transactions.commit(tx).await;
    tokio::time::sleep(PAST_SHORT).await;

    let fp = fingerprint();
    let mut tx = transactions.begin().await;
    let new = claimed(
        claim_in::<S, H>(store, &mut tx, &lapsed, &fp, LONG).await,
        CHECK,
        "claim_in after the lease ran out",
    );
    claimed(
        claim_in::<S, H>(store, &mut tx, &done, &fingerprint(), LONG).await,
        CHECK,
        "claim_in after the TTL ran out",
    );
    lease_lost(
        store
            .complete_in(
                &mut tx,
                &lapsed,
                old,
                output(Outcome::Ok, b"stale".to_vec()),
                LONG,
            )
            .await,
        CHECK,
        "complete_in with the expired claim's token",
    );
    let out = output(Outcome::Ok, b"\x01taken over".to_vec());
    ok(
        store
            .complete_in(&mut tx, &lapsed, new, out.clone(), LONG)
            .await,
        CHECK,
        "complete_in by the new owner",
    );
    transactions.commit(tx).await;
    let record = completed(
        claim(&**store, &lapsed, &fp, LONG).await,
        CHECK,
        "replay of the new owner's output",
    );
    assert_record(
        &record,
        &Record {
            fingerprint: fp,
            output: out,
        },
        CHECK,
        "replay of the new owner's output",
    );
}
