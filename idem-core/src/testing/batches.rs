//! Batches: `claim_batch` and `complete_batch` answer each item as its own call would.

use super::claims::Cancel;
use super::*;

/// [`Store::claim_batch`] and [`Store::complete_batch`] answer each item as its own call
/// would, in order: in one batch of claims a fresh key is claimed, of two claims of one key
/// one claims it and the other finds it in progress, a recorded key replays, and a key
/// another call holds is in progress with that call's fingerprint; a batch of records
/// completes its claims, refuses a token that does not own its key (`LeaseLost`, nothing
/// written), and accepts its own completion again (a retry after a lost reply).
pub async fn batches_answer_as_single_calls<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "batches_answer_as_single_calls";
    let [fresh, other, recorded, held] = [(); 4].map(|()| new_key(CHECK));
    let (fp, held_fp) = (fingerprint(), fingerprint());
    let record = output(Outcome::Ok, b"recorded".to_vec());
    let token = claimed(claim(&**store, &recorded, &fp, LONG).await, CHECK, "claim");
    if let Err(e) = store.complete(&recorded, token, record.clone(), LONG).await {
        panic!("[{CHECK}] complete of the recorded key: {e}");
    }
    let held_token = claimed(claim(&**store, &held, &held_fp, LONG).await, CHECK, "claim");
    assert!(
        store.claim_batch(&[], LONG).await.is_empty(),
        "[{CHECK}] an empty batch of claims"
    );

    let batch = [
        (&fresh, &fp),
        (&other, &fp),
        (&fresh, &fp),
        (&recorded, &fp),
        (&held, &fp),
    ];
    let answers = store.claim_batch(&batch, LONG).await;
    let Ok([first, second, again, replayed, busy]) = <[_; 5]>::try_from(answers) else {
        panic!("[{CHECK}] a batch of five claims must have five answers");
    };
    let (fresh_token, twin) = match (first, again) {
        (Ok(Claim::Claimed(token)), twin) | (twin, Ok(Claim::Claimed(token))) => (token, twin),
        (a, b) => panic!(
            "[{CHECK}] one of two claims of a fresh key in a batch must claim it: got {} and {}",
            brief(&a),
            brief(&b)
        ),
    };
    let twin = in_progress(twin, CHECK, "the other claim of the same key in the batch");
    assert_eq!(
        twin.fingerprint, fp,
        "[{CHECK}] in progress: the claimer's fingerprint"
    );
    let other_token = claimed(second, CHECK, "a second fresh key in the batch");
    let found = completed(replayed, CHECK, "a recorded key in the batch");
    assert_eq!(found.output, record, "[{CHECK}] the recorded output");
    let busy = in_progress(busy, CHECK, "a key another call holds, in the batch");
    assert_eq!(
        busy.fingerprint, held_fp,
        "[{CHECK}] in progress: the holder's fingerprint"
    );

    let outputs = [b"fresh".to_vec(), b"other".to_vec(), b"stale".to_vec()]
        .map(|bytes| output(Outcome::Ok, bytes));
    let records = [
        (&fresh, fresh_token, outputs[0].clone()),
        (&other, other_token, outputs[1].clone()),
        // The token of another key's claim: it does not own `held`.
        (&held, fresh_token, outputs[2].clone()),
    ];
    let written = store.complete_batch(&records, LONG).await;
    let Ok([fresh_done, other_done, stale]) = <[_; 3]>::try_from(written) else {
        panic!("[{CHECK}] a batch of three records must have three answers");
    };
    for (done, what) in [(fresh_done, "fresh"), (other_done, "other")] {
        if let Err(e) = done {
            panic!("[{CHECK}] completing the {what} key's claim in a batch: {e}");
        }
    }
    assert!(
        matches!(stale, Err(StoreError::LeaseLost)),
        "[{CHECK}] a record whose token does not own its key must be LeaseLost, got {stale:?}"
    );
    let retried = store.complete_batch(&records[..1], LONG).await;
    assert!(
        matches!(retried[..], [Ok(())]),
        "[{CHECK}] its own completion again (a retry) must be Ok, got {retried:?}"
    );
    for (key, output) in [(&fresh, &outputs[0]), (&other, &outputs[1])] {
        let found = completed(
            claim(&**store, key, &fp, LONG).await,
            CHECK,
            "after the batch",
        );
        assert_eq!(
            &found.output, output,
            "[{CHECK}] the output the batch recorded"
        );
    }
    let busy = in_progress(claim(&**store, &held, &fp, LONG).await, CHECK, "held key");
    assert_eq!(
        busy.fingerprint, held_fp,
        "[{CHECK}] the stale record wrote nothing"
    );
    if let Err(e) = store.release(&held, held_token).await {
        panic!("[{CHECK}] release of the held key: {e}");
    }
}

/// A batch of claims cancelled at any point holds none of its keys for more than a short
/// cleanup, as [`cancelled_claims_leave_nothing_behind`] asks of one claim: each key is
/// `Claimed` again within 1 s.
///
/// Not in the suite's list: the default `claim_batch` releases the claims a dropped batch
/// was already answered through [`Store::release_on_drop`], which by default does nothing
/// (the lease bounds the damage, as for a cancelled call). Run it for a store that
/// implements `release_on_drop` or its own `claim_batch`, as every store here does.
pub async fn cancelled_batches_leave_nothing_behind<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "cancelled_batches_leave_nothing_behind";
    for cancel in Cancel::ALL {
        let keys = [(); 8].map(|()| new_key(CHECK));
        let fp = fingerprint();
        let batch: Vec<(&Key, &Fingerprint)> = keys.iter().map(|key| (key, &fp)).collect();
        if let Some(finished) = cancel.run(store.claim_batch(&batch, LONG)).await {
            // It finished before the cancellation: nothing to check but a clean release.
            for (key, claim) in keys.iter().zip(finished) {
                let token = claimed(claim, CHECK, &format!("batch not cancelled ({cancel:?})"));
                ok(store.release(key, token).await, CHECK, "release");
            }
            continue;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let what = format!("a batch cancelled {cancel:?}");
        for key in &keys {
            claimed_again_by(&**store, key, deadline, CHECK, &what).await;
        }
    }
}
