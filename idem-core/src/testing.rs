//! The store conformance suite: checks every [`Store`] implementation must pass.
//!
//! In the spirit of `object_store`'s shared integration tests: a backend runs the same
//! checks the in-memory store runs, either all at once with [`run_all`], one test per check
//! with [`store_conformance_tests!`](crate::store_conformance_tests), or check by check by
//! calling the public functions below from its own tests.
//!
//! Every check makes its own keys (namespace `idem::testing::conformance`, key text unique
//! per process, time and call), so checks can share one store — one SQL table — and run in
//! parallel, in one process or in several. The checks use real time (short leases and TTLs
//! of a few hundred milliseconds, and real sleeps), because SQL stores take "now" from the
//! database clock: a store must keep deadlines to at least millisecond precision.
//!
//! The checks need a multi-threaded tokio runtime (the race check spawns its racers).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Barrier;

use crate::{Busy, Claim, Fingerprint, Key, Outcome, Output, Record, Store, StoreError, Token};

/// The namespace of every key the suite makes.
pub const NAMESPACE: &str = "idem::testing::conformance";
/// A second namespace, to check that namespaces separate keys.
pub const OTHER_NAMESPACE: &str = "idem::testing::conformance::other";

/// A lease or TTL that cannot run out while a check runs.
const LONG: Duration = Duration::from_secs(600);
/// The lease or TTL of the checks that wait for one to run out.
const SHORT: Duration = Duration::from_millis(300);
/// How long to sleep so that [`SHORT`], started just before, has surely passed.
const PAST_SHORT: Duration = Duration::from_millis(500);
/// How often the renew check renews its [`SHORT`] lease.
const RENEW_EVERY: Duration = Duration::from_millis(100);
/// How many racers claim one key at once in [`concurrent_claims_have_one_winner`].
const RACERS: usize = 64;
/// How many fresh keys they race for.
const RACE_ROUNDS: usize = 20;
/// How many expired claims they race to take over.
const TAKEOVER_ROUNDS: usize = 5;

/// Runs every check against `store`, one after another.
///
/// Panics (with the check's name in the message) at the first check that fails. Needs a
/// multi-threaded tokio runtime, e.g. `#[tokio::test(flavor = "multi_thread")]`.
pub async fn run_all<S: Store + ?Sized + 'static>(store: Arc<S>) {
    // Keep in step with the list in `__conformance_checks!`.
    claim_fresh_then_in_progress(&store).await;
    complete_then_replay(&store).await;
    fencing_rejects_wrong_tokens(&store).await;
    completed_record_is_final(&store).await;
    release_frees_the_key(&store).await;
    lease_expiry_allows_takeover(&store).await;
    renew_keeps_the_claim(&store).await;
    ttl_expiry_frees_the_key(&store).await;
    purge_expired_deletes_only_expired(&store).await;
    concurrent_claims_have_one_winner(&store).await;
    keys_and_namespaces_are_independent(&store).await;
    lease_remaining_is_bounded(&store).await;
    waiter_wakes_on_change(&store).await;
    cancelled_claims_leave_nothing_behind(&store).await;
    largest_output_round_trips(&store).await;
    claims_survive_record_pressure(&store).await;
}

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

/// A completed output is replayed byte for byte with the claimer's fingerprint: `Ok` and
/// cached `Err` outcomes, an empty output, a one-byte output, and 1 MiB of every byte
/// value (a store must keep outputs in a binary column large enough for real responses).
pub async fn complete_then_replay<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "complete_then_replay";
    let mut big = Vec::with_capacity(1 << 20);
    for i in 0..(1usize << 20) {
        big.push((i % 251) as u8 ^ (i >> 12) as u8);
    }
    let cases = [
        ("Ok output", output(Outcome::Ok, b"\x01ok value".to_vec())),
        (
            "Err output",
            output(Outcome::Err, b"\x01cached error".to_vec()),
        ),
        ("empty Ok output", output(Outcome::Ok, Vec::new())),
        ("empty Err output", output(Outcome::Err, Vec::new())),
        ("one-byte output 0x00", output(Outcome::Ok, vec![0])),
        ("one-byte output 0xff", output(Outcome::Ok, vec![0xff])),
        ("1 MiB output", output(Outcome::Ok, big)),
    ];
    for (what, out) in cases {
        let key = new_key(CHECK);
        let fp = fingerprint();
        let token = claimed(claim(&**store, &key, &fp, LONG).await, CHECK, what);
        ok(
            store.complete(&key, token, out.clone(), LONG).await,
            CHECK,
            &format!("{what}: complete by the owner"),
        );
        let expected = Record {
            fingerprint: fp,
            output: out,
        };
        for (attempt, claim_fp) in [
            ("replay", fp),
            ("replay with another payload", fingerprint()),
        ] {
            let record = completed(
                claim(&**store, &key, &claim_fp, LONG).await,
                CHECK,
                &format!("{what}: {attempt}"),
            );
            assert_record(&record, &expected, CHECK, &format!("{what}: {attempt}"));
        }
    }
}

/// `complete`, `release` and `renew` with a token that does not own the claim — forged,
/// or on a key that has no record — are `Err(LeaseLost)` and change nothing, and so does
/// `release_on_drop` with a wrong token; the owner can still complete afterwards.
pub async fn fencing_rejects_wrong_tokens<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "fencing_rejects_wrong_tokens";
    let key = new_key(CHECK);
    let fp = fingerprint();
    let owner = claimed(
        claim(&**store, &key, &fp, LONG).await,
        CHECK,
        "owner's claim",
    );
    let forged = [
        Token::new(owner.get().wrapping_add(1)),
        Token::new(owner.get().wrapping_sub(1)),
        Token::new(owner.get() ^ (1 << 63)),
        Token::new(!owner.get()),
    ];
    let intruder = output(Outcome::Ok, b"intruder".to_vec());
    for wrong in forged {
        let what = format!("token {} while {} owns the claim", wrong.get(), owner.get());
        lease_lost(
            store.complete(&key, wrong, intruder.clone(), LONG).await,
            CHECK,
            &format!("complete with {what}"),
        );
        lease_lost(
            store.release(&key, wrong).await,
            CHECK,
            &format!("release with {what}"),
        );
        lease_lost(
            store.renew(&key, wrong, LONG).await,
            CHECK,
            &format!("renew with {what}"),
        );
        store.release_on_drop(&key, wrong);
        let busy = in_progress(
            claim(&**store, &key, &fingerprint(), LONG).await,
            CHECK,
            &format!("claim after the refused operations with {what}"),
        );
        assert_eq!(
            busy.fingerprint, fp,
            "[{CHECK}] the claim must still be the owner's after the refused operations with {what}"
        );
    }
    // Give a spawned `release_on_drop` time to do (wrongly) what it would.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = in_progress(
        claim(&**store, &key, &fingerprint(), LONG).await,
        CHECK,
        "claim after release_on_drop with wrong tokens",
    );
    assert_eq!(
        busy.fingerprint, fp,
        "[{CHECK}] fingerprint after release_on_drop"
    );

    // A key that has no record at all.
    let absent = new_key(CHECK);
    lease_lost(
        store.complete(&absent, owner, intruder.clone(), LONG).await,
        CHECK,
        "complete on a key that has no record",
    );
    lease_lost(
        store.release(&absent, owner).await,
        CHECK,
        "release on a key that has no record",
    );
    lease_lost(
        store.renew(&absent, owner, LONG).await,
        CHECK,
        "renew on a key that has no record",
    );
    claimed(
        claim(&**store, &absent, &fingerprint(), LONG).await,
        CHECK,
        "claim of a key after refused operations on it (nothing may have been written)",
    );

    // The owner is unaffected.
    ok(
        store.renew(&key, owner, LONG).await,
        CHECK,
        "renew by the owner",
    );
    let mine = output(Outcome::Ok, b"owner".to_vec());
    ok(
        store.complete(&key, owner, mine.clone(), LONG).await,
        CHECK,
        "complete by the owner after refused operations",
    );
    let record = completed(
        claim(&**store, &key, &fp, LONG).await,
        CHECK,
        "replay of the owner's output",
    );
    assert_record(
        &record,
        &Record {
            fingerprint: fp,
            output: mine,
        },
        CHECK,
        "replay of the owner's output",
    );
}

/// Once completed, a record is final. Completing it again with the owner's token — the
/// retry of a `complete` whose reply was lost — is `Ok(())` and changes nothing; the owner
/// can neither release it nor renew it (`LeaseLost`); the first output stays.
pub async fn completed_record_is_final<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "completed_record_is_final";
    let key = new_key(CHECK);
    let fp = fingerprint();
    let token = claimed(claim(&**store, &key, &fp, LONG).await, CHECK, "claim");
    let first = output(Outcome::Ok, b"first".to_vec());
    ok(
        store.complete(&key, token, first.clone(), LONG).await,
        CHECK,
        "first complete",
    );
    ok(
        store
            .complete(&key, token, output(Outcome::Ok, b"second".to_vec()), LONG)
            .await,
        CHECK,
        "second complete with the same token (a retry after a lost reply)",
    );
    lease_lost(
        store.release(&key, token).await,
        CHECK,
        "release of a completed record",
    );
    lease_lost(
        store.renew(&key, token, LONG).await,
        CHECK,
        "renew of a completed record",
    );
    let record = completed(
        claim(&**store, &key, &fp, LONG).await,
        CHECK,
        "claim after the refused operations",
    );
    assert_record(
        &record,
        &Record {
            fingerprint: fp,
            output: first,
        },
        CHECK,
        "the first output must stay",
    );
}

/// `release` frees the key: the next claim is `Claimed` with a different token, and the
/// released token is refused from then on.
pub async fn release_frees_the_key<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "release_frees_the_key";
    let key = new_key(CHECK);
    let first = claimed(
        claim(&**store, &key, &fingerprint(), LONG).await,
        CHECK,
        "first claim",
    );
    ok(
        store.release(&key, first).await,
        CHECK,
        "release by the owner",
    );
    lease_lost(
        store.release(&key, first).await,
        CHECK,
        "second release with the same token",
    );
    let fp = fingerprint();
    let second = claimed(
        claim(&**store, &key, &fp, LONG).await,
        CHECK,
        "claim after release",
    );
    assert_ne!(
        first, second,
        "[{CHECK}] a new claim after release must get a new token"
    );
    lease_lost(
        store
            .complete(&key, first, output(Outcome::Ok, b"stale".to_vec()), LONG)
            .await,
        CHECK,
        "complete with the released token",
    );
    lease_lost(
        store.renew(&key, first, LONG).await,
        CHECK,
        "renew with the released token",
    );
    let busy = in_progress(
        claim(&**store, &key, &fingerprint(), LONG).await,
        CHECK,
        "claim while the second owner holds the key",
    );
    assert_eq!(
        busy.fingerprint, fp,
        "[{CHECK}] the second owner's fingerprint"
    );
    let out = output(Outcome::Ok, b"second".to_vec());
    ok(
        store.complete(&key, second, out.clone(), LONG).await,
        CHECK,
        "complete by the second owner",
    );
    let record = completed(
        claim(&**store, &key, &fp, LONG).await,
        CHECK,
        "replay after the second owner completed",
    );
    assert_record(
        &record,
        &Record {
            fingerprint: fp,
            output: out,
        },
        CHECK,
        "replay after the second owner completed",
    );
}

/// A claim whose lease ran out counts as absent: the next claim takes it over with a new
/// token, and the old owner's `complete`, `renew` and `release` are refused.
pub async fn lease_expiry_allows_takeover<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "lease_expiry_allows_takeover";
    let key = new_key(CHECK);
    let old_fp = fingerprint();
    let old = claimed(
        claim(&**store, &key, &old_fp, SHORT).await,
        CHECK,
        "first claim",
    );
    let busy = in_progress(
        claim(&**store, &key, &fingerprint(), SHORT).await,
        CHECK,
        "claim while the lease is live",
    );
    assert_eq!(
        busy.fingerprint, old_fp,
        "[{CHECK}] live claim's fingerprint"
    );
    tokio::time::sleep(PAST_SHORT).await;
    let new_fp = fingerprint();
    let new = claimed(
        claim(&**store, &key, &new_fp, LONG).await,
        CHECK,
        "claim after the lease ran out",
    );
    assert_ne!(old, new, "[{CHECK}] a takeover must get a new token");
    lease_lost(
        store
            .complete(&key, old, output(Outcome::Ok, b"late".to_vec()), LONG)
            .await,
        CHECK,
        "complete by the owner whose claim was taken over",
    );
    lease_lost(
        store.renew(&key, old, LONG).await,
        CHECK,
        "renew by the owner whose claim was taken over",
    );
    let busy = in_progress(
        claim(&**store, &key, &fingerprint(), LONG).await,
        CHECK,
        "claim after the old owner's refused complete",
    );
    assert_eq!(
        busy.fingerprint, new_fp,
        "[{CHECK}] the record must be the new owner's"
    );
    let out = output(Outcome::Ok, b"new owner".to_vec());
    ok(
        store.complete(&key, new, out.clone(), LONG).await,
        CHECK,
        "complete by the new owner",
    );
    lease_lost(
        store.release(&key, old).await,
        CHECK,
        "release by the owner whose claim was taken over",
    );
    let record = completed(
        claim(&**store, &key, &new_fp, LONG).await,
        CHECK,
        "replay after the takeover",
    );
    assert_record(
        &record,
        &Record {
            fingerprint: new_fp,
            output: out,
        },
        CHECK,
        "replay after the takeover",
    );
}

/// `renew` keeps a short lease alive well past its first deadline; once renewals stop and
/// the lease runs out, the key can be claimed again.
pub async fn renew_keeps_the_claim<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "renew_keeps_the_claim";
    let key = new_key(CHECK);
    let fp = fingerprint();
    let owner = claimed(claim(&**store, &key, &fp, SHORT).await, CHECK, "claim");
    // 7 renewals over ~700 ms: more than twice the 300 ms lease.
    for round in 1..=7 {
        tokio::time::sleep(RENEW_EVERY).await;
        ok(
            store.renew(&key, owner, SHORT).await,
            CHECK,
            &format!("renewal {round}"),
        );
        let busy = in_progress(
            claim(&**store, &key, &fingerprint(), SHORT).await,
            CHECK,
            &format!("claim by another call after renewal {round}"),
        );
        assert_eq!(
            busy.fingerprint, fp,
            "[{CHECK}] fingerprint after renewal {round}"
        );
        if let Some(remaining) = busy.lease_remaining {
            assert!(
                remaining <= SHORT,
                "[{CHECK}] lease_remaining {remaining:?} after renewal {round} exceeds the lease {SHORT:?}"
            );
        }
    }
    tokio::time::sleep(PAST_SHORT).await;
    let next = claimed(
        claim(&**store, &key, &fingerprint(), LONG).await,
        CHECK,
        "claim after the renewals stopped and the lease ran out",
    );
    assert_ne!(owner, next, "[{CHECK}] a takeover must get a new token");
    lease_lost(
        store.renew(&key, owner, SHORT).await,
        CHECK,
        "renew by the owner whose claim was taken over",
    );
}

/// A completed record is replayed until its TTL runs out, and then counts as absent.
pub async fn ttl_expiry_frees_the_key<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "ttl_expiry_frees_the_key";
    let key = new_key(CHECK);
    let fp = fingerprint();
    let token = claimed(claim(&**store, &key, &fp, LONG).await, CHECK, "claim");
    let out = output(Outcome::Ok, b"short-lived".to_vec());
    ok(
        store.complete(&key, token, out.clone(), SHORT).await,
        CHECK,
        "complete with a 300 ms TTL",
    );
    let record = completed(
        claim(&**store, &key, &fp, LONG).await,
        CHECK,
        "replay within the TTL",
    );
    assert_record(
        &record,
        &Record {
            fingerprint: fp,
            output: out,
        },
        CHECK,
        "replay within the TTL",
    );
    tokio::time::sleep(PAST_SHORT).await;
    let next = claimed(
        claim(&**store, &key, &fp, LONG).await,
        CHECK,
        "claim after the TTL ran out",
    );
    assert_ne!(
        token, next,
        "[{CHECK}] a claim after the TTL must get a new token"
    );
}

/// `purge_expired` deletes expired records — completed ones past their TTL and claims past
/// their lease — and counts them; live records of both kinds survive it.
///
/// The count must be at least the number of records this check let expire (other checks
/// may expire and purge records in the same store at the same time). A concurrent purge
/// can delete this check's records first, so a short count is retried twice with new
/// records before the check fails.
pub async fn purge_expired_deletes_only_expired<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "purge_expired_deletes_only_expired";
    // Live records, made first so that they are the oldest.
    let live_done = new_key(CHECK);
    let live_done_fp = fingerprint();
    let token = claimed(
        claim(&**store, &live_done, &live_done_fp, LONG).await,
        CHECK,
        "claim of the live completed record",
    );
    let live_out = output(Outcome::Ok, b"live".to_vec());
    ok(
        store
            .complete(&live_done, token, live_out.clone(), LONG)
            .await,
        CHECK,
        "complete of the live record",
    );
    let live_claim = new_key(CHECK);
    let live_claim_fp = fingerprint();
    let live_owner = claimed(
        claim(&**store, &live_claim, &live_claim_fp, LONG).await,
        CHECK,
        "live claim",
    );

    const EXPIRED_DONE: u64 = 3;
    const EXPIRED_CLAIMS: u64 = 2;
    let mut counts = Vec::new();
    for _attempt in 0..3 {
        let mut expired = Vec::new();
        for _ in 0..EXPIRED_DONE {
            let key = new_key(CHECK);
            let token = claimed(
                claim(&**store, &key, &fingerprint(), LONG).await,
                CHECK,
                "claim of a record to expire",
            );
            ok(
                store
                    .complete(&key, token, output(Outcome::Ok, b"x".to_vec()), SHORT)
                    .await,
                CHECK,
                "complete with a 300 ms TTL",
            );
            expired.push(key);
        }
        for _ in 0..EXPIRED_CLAIMS {
            let key = new_key(CHECK);
            claimed(
                claim(&**store, &key, &fingerprint(), SHORT).await,
                CHECK,
                "claim with a 300 ms lease",
            );
            expired.push(key);
        }
        tokio::time::sleep(PAST_SHORT).await;
        let purged = match store.purge_expired().await {
            Ok(n) => n,
            Err(e) => panic!("[{CHECK}] purge_expired failed: {e}"),
        };
        counts.push(purged);
        // Whoever purged them, the expired records are gone (or count as absent).
        for key in &expired {
            claimed(
                claim(&**store, key, &fingerprint(), LONG).await,
                CHECK,
                "claim of an expired record after purge_expired",
            );
        }
        if purged >= EXPIRED_DONE + EXPIRED_CLAIMS {
            break;
        }
    }
    assert!(
        counts.iter().any(|&n| n >= EXPIRED_DONE + EXPIRED_CLAIMS),
        "[{CHECK}] purge_expired must count the {} records this check let expire; it returned {counts:?}",
        EXPIRED_DONE + EXPIRED_CLAIMS
    );

    let record = completed(
        claim(&**store, &live_done, &live_done_fp, LONG).await,
        CHECK,
        "live completed record after purge_expired",
    );
    assert_record(
        &record,
        &Record {
            fingerprint: live_done_fp,
            output: live_out,
        },
        CHECK,
        "live completed record after purge_expired",
    );
    let busy = in_progress(
        claim(&**store, &live_claim, &fingerprint(), LONG).await,
        CHECK,
        "live claim after purge_expired",
    );
    assert_eq!(
        busy.fingerprint, live_claim_fp,
        "[{CHECK}] live claim's fingerprint after purge_expired"
    );
    ok(
        store
            .complete(
                &live_claim,
                live_owner,
                output(Outcome::Ok, Vec::new()),
                LONG,
            )
            .await,
        CHECK,
        "complete of the live claim after purge_expired",
    );
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

/// `Busy::lease_remaining`, where a store reports it, is at most the lease (and, for a
/// claim made a moment ago with a 10 s lease, more than half of it).
pub async fn lease_remaining_is_bounded<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "lease_remaining_is_bounded";
    for lease in [Duration::from_secs(10), SHORT] {
        let key = new_key(CHECK);
        let owner = claimed(
            claim(&**store, &key, &fingerprint(), lease).await,
            CHECK,
            "claim",
        );
        let check = |busy: Busy, when: &str| {
            if let Some(remaining) = busy.lease_remaining {
                assert!(
                    remaining <= lease,
                    "[{CHECK}] {when}: lease_remaining {remaining:?} exceeds the lease {lease:?}"
                );
                assert!(
                    remaining > lease / 2,
                    "[{CHECK}] {when}: lease_remaining {remaining:?} of a {lease:?} lease taken a moment ago"
                );
            }
        };
        check(
            in_progress(
                claim(&**store, &key, &fingerprint(), LONG).await,
                CHECK,
                "claim while claimed (with a longer lease of its own)",
            ),
            "after claim",
        );
        ok(store.renew(&key, owner, lease).await, CHECK, "renew");
        check(
            in_progress(
                claim(&**store, &key, &fingerprint(), LONG).await,
                CHECK,
                "claim after renew",
            ),
            "after renew",
        );
        ok(store.release(&key, owner).await, CHECK, "release");
    }
}

/// `Busy::waiter`, where a store offers one, stays pending while the claim is held and
/// resolves once the owner completes or releases it.
pub async fn waiter_wakes_on_change<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "waiter_wakes_on_change";
    for finish in ["complete", "release"] {
        let key = new_key(CHECK);
        let owner = claimed(
            claim(&**store, &key, &fingerprint(), LONG).await,
            CHECK,
            "claim",
        );
        let busy = in_progress(
            claim(&**store, &key, &fingerprint(), LONG).await,
            CHECK,
            "claim while claimed",
        );
        let Some(mut waiter) = busy.waiter else {
            // The store has no notification; callers poll. Nothing to check.
            ok(store.release(&key, owner).await, CHECK, "release");
            return;
        };
        if tokio::time::timeout(Duration::from_millis(100), &mut waiter)
            .await
            .is_ok()
        {
            panic!("[{CHECK}] the waiter resolved while the claim was still held");
        }
        let changed = if finish == "complete" {
            store
                .complete(&key, owner, output(Outcome::Ok, b"done".to_vec()), LONG)
                .await
        } else {
            store.release(&key, owner).await
        };
        ok(changed, CHECK, finish);
        if tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .is_err()
        {
            panic!("[{CHECK}] the waiter did not resolve within 2 s of the owner's {finish}");
        }
    }
}

/// A claim cancelled at any point — before its request left, while it was in flight, after
/// the store applied it but before the answer arrived — holds the key for at most a short
/// cleanup: a new claim of the key is `Claimed` within 1 s. (A store that applies a claim
/// its caller stopped waiting for must release that claim itself.) The claim is dropped
/// after 0 to 128 polls and after 1 to 5 ms.
pub async fn cancelled_claims_leave_nothing_behind<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "cancelled_claims_leave_nothing_behind";
    let polls = [0, 1, 2, 4, 8, 16, 32, 64, 128].map(Cancel::AfterPolls);
    let delays = [1, 2, 5].map(|ms| Cancel::After(Duration::from_millis(ms)));
    for cancel in polls.into_iter().chain(delays) {
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
        loop {
            match claim(&**store, &key, &fingerprint(), LONG).await {
                Ok(Claim::Claimed(token)) => {
                    ok(store.release(&key, token).await, CHECK, "release");
                    break;
                }
                Ok(Claim::InProgress(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!(
                    "[{CHECK}] a claim cancelled {cancel:?} still held the key 1 s later: {}",
                    brief(&other)
                ),
            }
        }
    }
}

/// When [`cancelled_claims_leave_nothing_behind`] drops a claim.
#[derive(Clone, Copy, Debug)]
enum Cancel {
    /// After polling it this many times more than once, yielding to the runtime between.
    AfterPolls(usize),
    /// After this long.
    After(Duration),
}

impl Cancel {
    /// `Some(output)` if `future` finished before the cancellation.
    async fn run<F: Future>(self, future: F) -> Option<F::Output> {
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

/// An output of exactly [`Store::max_output_len`] bytes is recorded and replayed byte for
/// byte (the executor refuses anything larger before it completes, so the limit must be
/// true), and the limit is at least 1 MiB.
pub async fn largest_output_round_trips<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "largest_output_round_trips";
    let max = store.max_output_len();
    assert!(
        max >= 1 << 20,
        "[{CHECK}] max_output_len() is {max} bytes: a store must hold outputs of at least 1 MiB"
    );
    let bytes: Vec<u8> = (0..max)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect();
    let key = new_key(CHECK);
    let fp = fingerprint();
    let token = claimed(claim(&**store, &key, &fp, LONG).await, CHECK, "claim");
    let out = output(Outcome::Ok, bytes);
    ok(
        store.complete(&key, token, out.clone(), LONG).await,
        CHECK,
        &format!("complete with an output of max_output_len() = {max} bytes"),
    );
    let record = completed(claim(&**store, &key, &fp, LONG).await, CHECK, "replay");
    assert_record(
        &record,
        &Record {
            fingerprint: fp,
            output: out,
        },
        CHECK,
        "replay of the largest output",
    );
}

/// How many other keys [`claims_survive_record_pressure`] records around its claim.
const PRESSURE_KEYS: usize = 2_000;

/// An in-progress claim stays while many other records come and go: a store that bounds its
/// size may forget completed records, never a claim whose body may still be running (else a
/// duplicate runs the body again — and keys are often chosen by clients). [`PRESSURE_KEYS`]
/// other keys are claimed and completed by 8 tasks; then the claim is still in progress with
/// its fingerprint, its owner completes it, and it replays.
pub async fn claims_survive_record_pressure<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "claims_survive_record_pressure";
    const TASKS: usize = 8;
    let key = new_key(CHECK);
    let fp = fingerprint();
    let token = claimed(claim(&**store, &key, &fp, LONG).await, CHECK, "claim");
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let store = store.clone();
        flood.spawn(async move {
            for _ in 0..PRESSURE_KEYS / TASKS {
                let other = new_key(CHECK);
                let fp = fingerprint();
                let token = claimed(claim(&*store, &other, &fp, LONG).await, CHECK, "flood");
                let out = output(Outcome::Ok, vec![7; 64]);
                ok(
                    store.complete(&other, token, out, LONG).await,
                    CHECK,
                    "flood complete",
                );
            }
        });
    }
    while let Some(done) = flood.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let busy = in_progress(
        claim(&**store, &key, &fingerprint(), LONG).await,
        CHECK,
        &format!("the claim after {PRESSURE_KEYS} other keys were recorded"),
    );
    assert_eq!(
        busy.fingerprint, fp,
        "[{CHECK}] the claim must keep its fingerprint"
    );
    let out = output(Outcome::Ok, b"survived".to_vec());
    ok(
        store.complete(&key, token, out.clone(), LONG).await,
        CHECK,
        "complete by the owner after the flood",
    );
    let record = completed(claim(&**store, &key, &fp, LONG).await, CHECK, "replay");
    assert_record(
        &record,
        &Record {
            fingerprint: fp,
            output: out,
        },
        CHECK,
        "replay after the flood",
    );
}

/// Runs `test` to completion on a new two-worker multi-threaded tokio runtime; what
/// [`store_conformance_tests!`](crate::store_conformance_tests) expands to, so that the
/// crate using it needs no tokio features of its own.
#[doc(hidden)]
pub fn __block_on<F: Future>(test: F) -> F::Output {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(test),
        Err(e) => panic!("could not start a tokio runtime for the conformance suite: {e}"),
    }
}

/// Generates one `#[test]` per conformance check for a store.
///
/// The argument is an expression giving an `Arc` of the store. It is evaluated once per
/// test, inside that test's async body on a fresh two-worker multi-threaded tokio runtime,
/// so it may `.await` (to connect a pool, say) and may refer to anything in scope where
/// the macro is invoked. The tests go in a module, `store_conformance` unless a name is
/// given first (to use the macro twice in one scope):
///
/// ```no_run
/// use std::sync::Arc;
/// use idem_core::MemoryStore;
///
/// idem_core::store_conformance_tests!(Arc::new(MemoryStore::new()));
/// idem_core::store_conformance_tests!(small, Arc::new(MemoryStore::with_capacity(10_000)));
/// # fn main() {}
/// ```
///
/// Invoke it at module level (a test file's top level, say), not inside a function.
///
/// Each check makes its own keys, so the expression may return a store shared by all of
/// the tests (one database table, say) and they may run in parallel. The tests build
/// their runtimes through idem-core's own tokio, so the crate using the macro needs no
/// tokio dependency for them.
#[macro_export]
macro_rules! store_conformance_tests {
    ($module:ident, $make:expr $(,)?) => {
        #[allow(unused_imports)]
        mod $module {
            use super::*;
            $crate::__conformance_checks!(($crate::store_conformance_tests) (@tests ($make)));
        }
    };
    (@tests ($make:expr) $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::testing::__block_on(async {
                    let store = $make;
                    $crate::testing::$check(&store).await;
                });
            }
        )*
    };
    ($make:expr $(,)?) => {
        $crate::store_conformance_tests!(store_conformance, $make);
    };
}

/// Invokes the macro `($callback)` with `$args` followed by the name of every conformance
/// check: the one list that the macros generating a test per check share (keep it in step
/// with `run_all`).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_checks {
    (($($callback:tt)+) ($($args:tt)*)) => {
        $($callback)+!($($args)*
            claim_fresh_then_in_progress,
            complete_then_replay,
            fencing_rejects_wrong_tokens,
            completed_record_is_final,
            release_frees_the_key,
            lease_expiry_allows_takeover,
            renew_keeps_the_claim,
            ttl_expiry_frees_the_key,
            purge_expired_deletes_only_expired,
            concurrent_claims_have_one_winner,
            keys_and_namespaces_are_independent,
            lease_remaining_is_bounded,
            waiter_wakes_on_change,
            cancelled_claims_leave_nothing_behind,
            largest_output_round_trips,
            claims_survive_record_pressure,
        );
    };
}

// ---- helpers ------------------------------------------------------------------------

/// Text no other check, process or run uses: label, process id, wall-clock nanoseconds and
/// a per-process counter.
fn unique(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{label}-{}-{nanos:x}-{n}", std::process::id())
}

/// A fresh key in [`NAMESPACE`].
#[track_caller]
fn new_key(label: &str) -> Key {
    key_in(NAMESPACE, &unique(label))
}

#[track_caller]
fn key_in(namespace: &'static str, text: &str) -> Key {
    match Key::new(namespace, text) {
        Ok(key) => key,
        Err(e) => panic!("could not build the key {text:?}: {e}"),
    }
}

/// A fingerprint no other call uses.
#[track_caller]
fn fingerprint() -> Fingerprint {
    match Fingerprint::of(&unique("fingerprint")) {
        Ok(fp) => fp,
        Err(e) => panic!("could not fingerprint a string: {e}"),
    }
}

fn output(outcome: Outcome, bytes: Vec<u8>) -> Output {
    Output {
        outcome,
        bytes: Bytes::from(bytes),
    }
}

async fn claim<S: Store + ?Sized>(
    store: &S,
    key: &Key,
    fp: &Fingerprint,
    lease: Duration,
) -> Result<Claim, StoreError> {
    store.claim(key, fp, lease).await
}

#[track_caller]
fn claimed(claim: Result<Claim, StoreError>, check: &str, what: &str) -> Token {
    match claim {
        Ok(Claim::Claimed(token)) => token,
        other => panic!("[{check}] {what}: expected Claimed, got {}", brief(&other)),
    }
}

#[track_caller]
fn completed(claim: Result<Claim, StoreError>, check: &str, what: &str) -> Record {
    match claim {
        Ok(Claim::Completed(record)) => record,
        other => panic!(
            "[{check}] {what}: expected Completed, got {}",
            brief(&other)
        ),
    }
}

#[track_caller]
fn in_progress(claim: Result<Claim, StoreError>, check: &str, what: &str) -> Busy {
    match claim {
        Ok(Claim::InProgress(busy)) => busy,
        other => panic!(
            "[{check}] {what}: expected InProgress, got {}",
            brief(&other)
        ),
    }
}

/// A claim's `Debug` without megabytes of output bytes.
fn brief(claim: &Result<Claim, StoreError>) -> String {
    match claim {
        Ok(Claim::Completed(record)) => format!(
            "Ok(Completed {{ fingerprint: {:?}, outcome: {:?}, {} bytes }})",
            record.fingerprint,
            record.output.outcome,
            record.output.bytes.len()
        ),
        other => format!("{other:?}"),
    }
}

#[track_caller]
fn ok(result: Result<(), StoreError>, check: &str, what: &str) {
    if let Err(e) = result {
        panic!("[{check}] {what}: expected Ok(()), got Err({e:?}): {e}");
    }
}

#[track_caller]
fn lease_lost(result: Result<(), StoreError>, check: &str, what: &str) {
    match result {
        Err(StoreError::LeaseLost) => {}
        other => panic!("[{check}] {what}: expected Err(LeaseLost), got {other:?}"),
    }
}

#[track_caller]
fn assert_record(got: &Record, expected: &Record, check: &str, what: &str) {
    assert_eq!(
        got.fingerprint, expected.fingerprint,
        "[{check}] {what}: fingerprint"
    );
    assert_eq!(
        got.output.outcome, expected.output.outcome,
        "[{check}] {what}: outcome"
    );
    assert!(
        got.output.bytes == expected.output.bytes,
        "[{check}] {what}: expected {} bytes starting {:?}, got {} bytes starting {:?}",
        expected.output.bytes.len(),
        &expected.output.bytes[..expected.output.bytes.len().min(16)],
        got.output.bytes.len(),
        &got.output.bytes[..got.output.bytes.len().min(16)],
    );
}

/// The suite checked against itself: a small reference store passes every check, and
/// each deliberately broken variant of it fails the check meant to catch that bug.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyDigest, Waiter};
    use async_trait::async_trait;
    use std::collections::HashMap;
    use std::sync::{Mutex, MutexGuard};
    use std::time::Instant;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Bug {
        None,
        ClaimIgnoresInProgress,
        BusyReportsCallerFingerprint,
        ReplayReportsCallerFingerprint,
        DropsEmptyOutputs,
        TruncatesLargeOutputs,
        ErrStoredAsOk,
        UnfencedComplete,
        UnfencedRelease,
        UnfencedRenew,
        CompleteOverwritesCompleted,
        ReleaseDoesNothing,
        TokenPerKey,
        LeaseNeverExpires,
        RenewDoesNothing,
        TtlIgnored,
        PurgeCountsNothing,
        PurgeDeletesLive,
        RacyClaim,
        IgnoresNamespace,
        LeaseRemainingTooLong,
        WaiterReadyAtOnce,
        WaiterNeverWakes,
        CompleteNotIdempotent,
        OrphanOnCancel,
        EvictsClaims,
        OverstatesMaxOutput,
    }

    /// How many records the store keeps with [`Bug::EvictsClaims`].
    const EVICTING_CAPACITY: usize = 64;

    enum Slot {
        Claimed {
            token: Token,
            fingerprint: Fingerprint,
            until: Instant,
        },
        Done {
            token: Token,
            record: Record,
            until: Instant,
        },
    }

    impl Slot {
        fn until(&self) -> Instant {
            match self {
                Slot::Claimed { until, .. } | Slot::Done { until, .. } => *until,
            }
        }
    }

    /// A mutex around a map; correct unless given a bug.
    struct Reference {
        bug: Bug,
        next: AtomicU64,
        slots: Mutex<HashMap<KeyDigest, Slot>>,
    }

    impl Reference {
        fn new(bug: Bug) -> Arc<Self> {
            Arc::new(Reference {
                bug,
                next: AtomicU64::new(1),
                slots: Mutex::new(HashMap::new()),
            })
        }

        fn slots(&self) -> MutexGuard<'_, HashMap<KeyDigest, Slot>> {
            self.slots.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// Inserts a slot; with [`Bug::EvictsClaims`], first makes room by evicting any
        /// record, claims included.
        fn insert(&self, slots: &mut HashMap<KeyDigest, Slot>, index: KeyDigest, slot: Slot) {
            if self.bug == Bug::EvictsClaims && slots.len() >= EVICTING_CAPACITY {
                let victim = slots.keys().find(|k| **k != index).copied();
                if let Some(victim) = victim {
                    slots.remove(&victim);
                }
            }
            slots.insert(index, slot);
        }

        fn index(&self, key: &Key) -> KeyDigest {
            if self.bug == Bug::IgnoresNamespace {
                *new_key_in("any", key.preview()).digest()
            } else {
                *key.digest()
            }
        }

        fn token(&self, index: &KeyDigest) -> Token {
            if self.bug == Bug::TokenPerKey {
                let mut first = [0; 8];
                first.copy_from_slice(&index.as_bytes()[..8]);
                Token::new(u64::from_le_bytes(first))
            } else {
                Token::new(self.next.fetch_add(1, Ordering::Relaxed))
            }
        }

        /// Whether `token` may complete, release or renew the record at `index`.
        fn owns(&self, slot: Option<&Slot>, token: Token, unfenced: Bug) -> bool {
            match slot {
                Some(Slot::Claimed { token: owner, .. }) => *owner == token || self.bug == unfenced,
                Some(Slot::Done { token: owner, .. }) => {
                    *owner == token && self.bug == Bug::CompleteOverwritesCompleted
                }
                None => false,
            }
        }
    }

    fn new_key_in(namespace: &'static str, text: &str) -> Key {
        key_in(namespace, text)
    }

    #[async_trait]
    impl Store for Reference {
        async fn claim(
            &self,
            key: &Key,
            fingerprint: &Fingerprint,
            lease: Duration,
        ) -> Result<Claim, StoreError> {
            let index = self.index(key);
            let now = Instant::now();
            let live = |slot: &Slot| match slot {
                Slot::Claimed { .. } if self.bug == Bug::ClaimIgnoresInProgress => false,
                Slot::Claimed { .. } if self.bug == Bug::LeaseNeverExpires => true,
                slot => slot.until() > now,
            };
            if self.bug == Bug::RacyClaim && !self.slots().get(&index).is_some_and(live) {
                // Check, then act: another racer can claim in between.
                tokio::task::yield_now().await;
                let token = self.token(&index);
                let slot = Slot::Claimed {
                    token,
                    fingerprint: *fingerprint,
                    until: now + lease,
                };
                self.slots().insert(index, slot);
                return Ok(Claim::Claimed(token));
            }
            let claim = {
                let mut slots = self.slots();
                match slots.get(&index) {
                    Some(slot @ Slot::Done { record, .. }) if live(slot) => {
                        let mut record = record.clone();
                        if self.bug == Bug::ReplayReportsCallerFingerprint {
                            record.fingerprint = *fingerprint;
                        }
                        Ok(Claim::Completed(record))
                    }
                    Some(
                        slot @ Slot::Claimed {
                            fingerprint: owner,
                            until,
                            ..
                        },
                    ) if live(slot) => Ok(Claim::InProgress(Busy {
                        fingerprint: if self.bug == Bug::BusyReportsCallerFingerprint {
                            *fingerprint
                        } else {
                            *owner
                        },
                        lease_remaining: Some(if self.bug == Bug::LeaseRemainingTooLong {
                            until.saturating_duration_since(now) * 2
                        } else {
                            until.saturating_duration_since(now)
                        }),
                        waiter: match self.bug {
                            Bug::WaiterReadyAtOnce => Some(Waiter::new(async {})),
                            Bug::WaiterNeverWakes => Some(Waiter::new(std::future::pending())),
                            _ => None,
                        },
                    })),
                    _ => {
                        let token = self.token(&index);
                        let slot = Slot::Claimed {
                            token,
                            fingerprint: *fingerprint,
                            until: now + lease,
                        };
                        self.insert(&mut slots, index, slot);
                        Ok(Claim::Claimed(token))
                    }
                }
            };
            if self.bug == Bug::OrphanOnCancel && matches!(claim, Ok(Claim::Claimed(_))) {
                // Applied, and the answer is on its way: a cancellation now leaves the
                // claim behind.
                tokio::task::yield_now().await;
            }
            claim
        }

        async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
            let index = self.index(key);
            let mut slots = self.slots();
            if !self.owns(slots.get(&index), token, Bug::UnfencedRenew) {
                return Err(StoreError::LeaseLost);
            }
            if let Some(Slot::Claimed { until, .. }) = slots.get_mut(&index)
                && self.bug != Bug::RenewDoesNothing
            {
                *until = Instant::now() + lease;
            }
            Ok(())
        }

        async fn complete(
            &self,
            key: &Key,
            token: Token,
            mut output: Output,
            ttl: Duration,
        ) -> Result<(), StoreError> {
            let index = self.index(key);
            let mut slots = self.slots();
            if self.bug == Bug::OverstatesMaxOutput && output.bytes.len() > 2 << 20 {
                return Err(StoreError::backend("complete", "packet too large"));
            }
            let fingerprint = match slots.get(&index) {
                // The owner again: a retry after a lost reply.
                Some(Slot::Done { token: owner, .. })
                    if *owner == token && self.bug != Bug::CompleteOverwritesCompleted =>
                {
                    return if self.bug == Bug::CompleteNotIdempotent {
                        Err(StoreError::LeaseLost)
                    } else {
                        Ok(())
                    };
                }
                Some(slot) if self.owns(Some(slot), token, Bug::UnfencedComplete) => match slot {
                    Slot::Claimed { fingerprint, .. } => *fingerprint,
                    Slot::Done { record, .. } => record.fingerprint,
                },
                _ => return Err(StoreError::LeaseLost),
            };
            if self.bug == Bug::DropsEmptyOutputs && output.bytes.is_empty() {
                slots.remove(&index);
                return Ok(());
            }
            if self.bug == Bug::TruncatesLargeOutputs {
                output.bytes.truncate(65_535);
            }
            if self.bug == Bug::ErrStoredAsOk {
                output.outcome = Outcome::Ok;
            }
            let ttl = if self.bug == Bug::TtlIgnored {
                LONG
            } else {
                ttl
            };
            let record = Record {
                fingerprint,
                output,
            };
            let until = Instant::now() + ttl;
            self.insert(
                &mut slots,
                index,
                Slot::Done {
                    token,
                    record,
                    until,
                },
            );
            Ok(())
        }

        async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
            let index = self.index(key);
            let mut slots = self.slots();
            if !self.owns(slots.get(&index), token, Bug::UnfencedRelease) {
                return Err(StoreError::LeaseLost);
            }
            if self.bug != Bug::ReleaseDoesNothing {
                slots.remove(&index);
            }
            Ok(())
        }

        async fn purge_expired(&self) -> Result<u64, StoreError> {
            let now = Instant::now();
            let mut slots = self.slots();
            let before = slots.len();
            slots.retain(|_, slot| match slot {
                Slot::Done { .. } if self.bug == Bug::PurgeDeletesLive => false,
                slot => slot.until() > now,
            });
            let purged = (before - slots.len()) as u64;
            Ok(if self.bug == Bug::PurgeCountsNothing {
                0
            } else {
                purged
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reference_store_passes() {
        // As a trait object, too: the checks take any `Arc<S>` with `S: ?Sized`.
        let store: Arc<dyn Store> = Reference::new(Bug::None);
        run_all(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn suites_share_one_reference_store() {
        let store = Reference::new(Bug::None);
        tokio::join!(run_all(store.clone()), run_all(store.clone()));
    }

    macro_rules! mutants {
        ($($name:ident: $bug:ident fails $check:ident;)*) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = Reference::new(Bug::$bug);
                let run = tokio::spawn(async move { $check(&store).await });
                match run.await {
                    Err(e) if e.is_panic() => {}
                    _ => panic!(
                        "{} passed a store with the bug {:?}",
                        stringify!($check),
                        Bug::$bug
                    ),
                }
            }
        )*};
    }

    mutants! {
        catches_claim_ignoring_in_progress: ClaimIgnoresInProgress fails claim_fresh_then_in_progress;
        catches_busy_with_callers_fingerprint: BusyReportsCallerFingerprint fails claim_fresh_then_in_progress;
        catches_replay_with_callers_fingerprint: ReplayReportsCallerFingerprint fails complete_then_replay;
        catches_dropped_empty_outputs: DropsEmptyOutputs fails complete_then_replay;
        catches_truncated_outputs: TruncatesLargeOutputs fails complete_then_replay;
        catches_lost_err_outcome: ErrStoredAsOk fails complete_then_replay;
        catches_unfenced_complete: UnfencedComplete fails fencing_rejects_wrong_tokens;
        catches_unfenced_release: UnfencedRelease fails fencing_rejects_wrong_tokens;
        catches_unfenced_renew: UnfencedRenew fails fencing_rejects_wrong_tokens;
        catches_overwritten_completion: CompleteOverwritesCompleted fails completed_record_is_final;
        catches_release_doing_nothing: ReleaseDoesNothing fails release_frees_the_key;
        catches_reused_tokens_after_release: TokenPerKey fails release_frees_the_key;
        catches_reused_tokens_after_expiry: TokenPerKey fails lease_expiry_allows_takeover;
        catches_leases_never_expiring: LeaseNeverExpires fails lease_expiry_allows_takeover;
        catches_renew_doing_nothing: RenewDoesNothing fails renew_keeps_the_claim;
        catches_renewal_leases_never_expiring: LeaseNeverExpires fails renew_keeps_the_claim;
        catches_ignored_ttl: TtlIgnored fails ttl_expiry_frees_the_key;
        catches_purge_counting_nothing: PurgeCountsNothing fails purge_expired_deletes_only_expired;
        catches_purge_deleting_live_records: PurgeDeletesLive fails purge_expired_deletes_only_expired;
        catches_racy_claims: RacyClaim fails concurrent_claims_have_one_winner;
        catches_ignored_namespace: IgnoresNamespace fails keys_and_namespaces_are_independent;
        catches_overlong_lease_remaining: LeaseRemainingTooLong fails lease_remaining_is_bounded;
        catches_waiter_ready_at_once: WaiterReadyAtOnce fails waiter_wakes_on_change;
        catches_waiter_never_waking: WaiterNeverWakes fails waiter_wakes_on_change;
        catches_complete_refusing_its_retry: CompleteNotIdempotent fails completed_record_is_final;
        catches_claims_orphaned_by_cancellation: OrphanOnCancel fails cancelled_claims_leave_nothing_behind;
        catches_evicted_claims: EvictsClaims fails claims_survive_record_pressure;
        catches_overstated_max_output: OverstatesMaxOutput fails largest_output_round_trips;
    }
}
