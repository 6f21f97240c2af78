//! Claims: one winner, what a concurrent claimer sees, keys that stay apart, and claims
//! cancelled halfway.

use super::*;

/// How many racers claim one key at once in [`concurrent_claims_have_one_winner`].
const RACERS: usize = 64;

/// How many fresh keys they race for.
const RACE_ROUNDS: usize = 20;

/// How many expired claims they race to take over.
const TAKEOVER_ROUNDS: usize = 5;

/// A fresh key is `Claimed`; a second claim of it is `InProgress` and reports the
/// fingerprint of the claimer (not its own).
pub async fn claim_fresh_then_in_progress<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "claim_fresh_then_in_progress";
    let key = new_key(CHECK);
    let (owner_fp, other_fp) = (fingerprint(), fingerprint());
    claimed(
        claim(&**store, &key, &owner_fp, LONG).await,
        CHECK,
        "first claim of a fresh key",
    );
    let busy = in_progress(
        claim(&**store, &key, &other_fp, LONG).await,
        CHECK,
        "second claim of a claimed key",
    );
    assert_eq!(
        busy.fingerprint, owner_fp,
        "[{CHECK}] InProgress must carry the fingerprint of the call that owns the claim"
    );
    // And again: a refused claim changes nothing.
    let busy = in_progress(
        claim(&**store, &key, &owner_fp, LONG).await,
        CHECK,
        "third claim of a claimed key",
    );
    assert_eq!(
        busy.fingerprint, owner_fp,
        "[{CHECK}] third claim: fingerprint"
    );
}

/// A store that answers [`Store::claim_now`] answers as [`Store::claim`] would, from the
/// same records: a claim made through one is seen by the other, in progress and completed
/// (stores that answer `None` pass trivially: the protocol always awaits their `claim`).
pub async fn claim_now_agrees_with_claim<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "claim_now_agrees_with_claim";
    let (key, other) = (new_key(CHECK), new_key(CHECK));
    let fp = fingerprint();
    let Some(first) = store.claim_now(&key, &fp, LONG) else {
        return;
    };
    let token = claimed(first, CHECK, "claim_now of a fresh key");
    let busy = in_progress(
        store.claim(&key, &fp, LONG).await,
        CHECK,
        "claim of a key claimed through claim_now",
    );
    assert_eq!(busy.fingerprint, fp, "[{CHECK}] claim: fingerprint");
    let out = output(Outcome::Ok, b"now".to_vec());
    ok(
        store.complete(&key, token, out.clone(), LONG).await,
        CHECK,
        "complete",
    );
    let now = store
        .claim_now(&key, &fp, LONG)
        .map(|c| completed(c, CHECK, "claim_now"));
    let later = completed(store.claim(&key, &fp, LONG).await, CHECK, "claim");
    assert_eq!(
        now.map(|r| r.output),
        Some(out.clone()),
        "[{CHECK}] claim_now must replay the record"
    );
    assert_eq!(later.output, out, "[{CHECK}] claim must replay the record");
    // The other way round: a claim through `claim` is in progress for `claim_now`.
    claimed(
        store.claim(&other, &fp, LONG).await,
        CHECK,
        "claim of a fresh key",
    );
    match store.claim_now(&other, &fp, LONG) {
        Some(answer) => {
            in_progress(answer, CHECK, "claim_now of a key claimed through claim");
        }
        None => {
            panic!("[{CHECK}] claim_now answered once, then not: it must answer always or never")
        }
    }
}

/// 64 tasks claim one fresh key at the same moment: exactly one gets `Claimed`, the other
/// 63 `InProgress` with the winner's fingerprint. Twenty rounds with fresh keys, then five
/// rounds racing to take over a claim whose lease ran out.
pub async fn concurrent_claims_have_one_winner<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "concurrent_claims_have_one_winner";
    for round in 0..RACE_ROUNDS {
        let key = new_key(CHECK);
        race(store, &key, &format!("fresh key, round {round}")).await;
    }
    let mut stale = Vec::new();
    for _ in 0..TAKEOVER_ROUNDS {
        let key = new_key(CHECK);
        let token = claimed(
            claim(&**store, &key, &fingerprint(), SHORT).await,
            CHECK,
            "claim with a 300 ms lease",
        );
        stale.push((key, token));
    }
    tokio::time::sleep(PAST_SHORT).await;
    for (round, (key, old)) in stale.iter().enumerate() {
        let winner = race(store, key, &format!("expired claim, round {round}")).await;
        assert_ne!(
            winner, *old,
            "[{CHECK}] the takeover winner must get a new token (round {round})"
        );
    }
}

/// One race of [`RACERS`] tasks for `key`; returns the winner's token.
async fn race<S: Store + ?Sized + 'static>(store: &Arc<S>, key: &Key, what: &str) -> Token {
    const CHECK: &str = "concurrent_claims_have_one_winner";
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut racers = Vec::with_capacity(RACERS);
    for _ in 0..RACERS {
        let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
        let fp = fingerprint();
        racers.push(tokio::spawn(async move {
            barrier.wait().await;
            (fp, store.claim(&key, &fp, LONG).await)
        }));
    }
    let mut winners = Vec::new();
    let mut busy = Vec::new();
    for racer in racers {
        let (fp, result) = match racer.await {
            Ok(r) => r,
            Err(e) => panic!("[{CHECK}] {what}: a racer task failed: {e}"),
        };
        match result {
            Ok(Claim::Claimed(token)) => winners.push((fp, token)),
            Ok(Claim::InProgress(b)) => busy.push(b.fingerprint),
            Ok(other @ Claim::Completed(_)) => {
                panic!("[{CHECK}] {what}: nobody completed, yet a racer got {other:?}")
            }
            Err(e) => panic!("[{CHECK}] {what}: claim failed: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "[{CHECK}] {what}: exactly one of {RACERS} racers must win the claim; winners: {winners:?}"
    );
    let (winner_fp, token) = winners[0];
    assert_eq!(busy.len(), RACERS - 1, "[{CHECK}] {what}: InProgress count");
    assert!(
        busy.iter().all(|fp| *fp == winner_fp),
        "[{CHECK}] {what}: every loser must see the winner's fingerprint"
    );
    ok(
        store
            .complete(key, token, output(Outcome::Ok, b"won".to_vec()), LONG)
            .await,
        CHECK,
        &format!("{what}: complete by the winner"),
    );
    let record = completed(
        claim(&**store, key, &winner_fp, LONG).await,
        CHECK,
        &format!("{what}: replay"),
    );
    assert_eq!(
        record.fingerprint, winner_fp,
        "[{CHECK}] {what}: replay fingerprint"
    );
    token
}

/// Distinct keys, the same key text in another namespace, and the same key under
/// another scope are separate records: claiming, completing or releasing one leaves the
/// others as they were.
pub async fn keys_and_namespaces_are_independent<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "keys_and_namespaces_are_independent";
    let text = unique(CHECK);
    let scoped = |scope: &str| match Key::scoped(NAMESPACE, scope, text.as_str()) {
        Ok(k) => k,
        Err(e) => panic!("[{CHECK}] could not build a scoped key: {e}"),
    };
    let keys = [
        ("k1", key_in(NAMESPACE, &text)),
        ("k2", key_in(NAMESPACE, &format!("{text}-2"))),
        ("k1 in another namespace", key_in(OTHER_NAMESPACE, &text)),
        ("k1 under scope u1", scoped("u1")),
        ("k1 under scope u2", scoped("u2")),
    ];
    let mut owners = Vec::new();
    for (what, key) in &keys {
        let fp = fingerprint();
        let token = claimed(
            claim(&**store, key, &fp, LONG).await,
            CHECK,
            &format!("first claim of {what}, after claiming the keys before it"),
        );
        owners.push((fp, token));
    }
    // Complete k1, release k2; the others stay in progress with their own fingerprints.
    let out = output(Outcome::Ok, b"k1".to_vec());
    ok(
        store
            .complete(&keys[0].1, owners[0].1, out.clone(), LONG)
            .await,
        CHECK,
        "complete k1",
    );
    ok(
        store.release(&keys[1].1, owners[1].1).await,
        CHECK,
        "release k2",
    );
    let record = completed(
        claim(&**store, &keys[0].1, &owners[0].0, LONG).await,
        CHECK,
        "replay of k1",
    );
    assert_record(
        &record,
        &Record {
            fingerprint: owners[0].0,
            output: out,
        },
        CHECK,
        "replay of k1",
    );
    claimed(
        claim(&**store, &keys[1].1, &fingerprint(), LONG).await,
        CHECK,
        "claim of k2 after its release",
    );
    for ((what, key), (fp, _)) in keys.iter().zip(&owners).skip(2) {
        let busy = in_progress(
            claim(&**store, key, &fingerprint(), LONG).await,
            CHECK,
            &format!("{what} after k1 completed and k2 was released"),
        );
        assert_eq!(
            busy.fingerprint, *fp,
            "[{CHECK}] {what}: its own fingerprint"
        );
    }
}

/// A claim cancelled at any point — before its request left, while it was in flight, after
/// the store applied it but before the answer arrived — holds the key for at most a short
/// cleanup: a new claim of the key is `Claimed` within 1 s. (A store that applies a claim
/// its caller stopped waiting for must release that claim itself.) The claim is dropped
/// after 0 to 128 polls and after 1 to 5 ms.
pub async fn cancelled_claims_leave_nothing_behind<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "cancelled_claims_leave_nothing_behind";
    for cancel in Cancel::ALL {
        let key = new_key(CHECK);
        let fp = fingerprint();
        if let Some(finished) = cancel.run(claim(&**store, &key, &fp, LONG)).await {
            // It finished before the cancellation: nothing to check but a clean release.
            let token = claimed(
                finished,
                CHECK,
                &format!("claim not cancelled ({cancel:?})"),
            );
            ok(store.release(&key, token).await, CHECK, "release");
            continue;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let what = format!("a claim cancelled {cancel:?}");
        claimed_again_by(&**store, &key, deadline, CHECK, &what).await;
    }
}

/// When [`cancelled_claims_leave_nothing_behind`] drops a claim.
#[derive(Clone, Copy, Debug)]
pub(super) enum Cancel {
    /// After polling it this many times more than once, yielding to the runtime between.
    AfterPolls(usize),
    /// After this long.
    After(Duration),
}

impl Cancel {
    /// Every point a check cancels at: after 0 to 128 polls, after 1 to 5 ms.
    pub(super) const ALL: [Cancel; 12] = [
        Cancel::AfterPolls(0),
        Cancel::AfterPolls(1),
        Cancel::AfterPolls(2),
        Cancel::AfterPolls(4),
        Cancel::AfterPolls(8),
        Cancel::AfterPolls(16),
        Cancel::AfterPolls(32),
        Cancel::AfterPolls(64),
        Cancel::AfterPolls(128),
        Cancel::After(Duration::from_millis(1)),
        Cancel::After(Duration::from_millis(2)),
        Cancel::After(Duration::from_millis(5)),
    ];

    /// `Some(output)` if `future` finished before the cancellation.
    pub(super) async fn run<F: Future>(self, future: F) -> Option<F::Output> {
        match self {
            Cancel::After(delay) => tokio::time::timeout(delay, future).await.ok(),
            Cancel::AfterPolls(polls) => {
                let mut future = std::pin::pin!(future);
                for _ in 0..=polls {
                    let poll =
                        std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx)))
                            .await;
                    if let std::task::Poll::Ready(output) = poll {
                        return Some(output);
                    }
                    tokio::task::yield_now().await;
                }
                None
            }
        }
    }
}
