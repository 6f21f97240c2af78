//! Time: leases, renewals, TTLs and purging, by the store's clock.

use super::*;

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
/// A store whose records expire by themselves ([`Store::expires_records_itself`]) is held to
/// that instead: the expired records are gone before any purge, `purge_expired` returns 0,
/// and live records survive it.
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
        if store.expires_records_itself() {
            // Purge first: a store that only said so, and deleted them in purge, is caught.
            match store.purge_expired().await {
                Ok(0) => {}
                Ok(n) => panic!(
                    "[{CHECK}] the store expires records itself, so purge_expired has nothing to \
                     delete; it returned {n}"
                ),
                Err(e) => panic!("[{CHECK}] purge_expired failed: {e}"),
            }
            for key in &expired {
                claimed(
                    claim(&**store, key, &fingerprint(), LONG).await,
                    CHECK,
                    "claim of a record that expired by itself",
                );
            }
            break;
        }
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
        store.expires_records_itself()
            || counts.iter().any(|&n| n >= EXPIRED_DONE + EXPIRED_CLAIMS),
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
