//! Fencing: only the token that owns a claim may complete, release or renew it.

use super::*;

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
