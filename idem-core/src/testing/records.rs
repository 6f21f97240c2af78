//! Completed records: replayed byte for byte, final, as large as the store says, and kept
//! apart from the claims a store under pressure must never forget.

use super::*;

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
/// duplicate runs the body again — and keys are often chosen by clients). 2,000 other keys
/// are claimed and completed by 8 tasks; then the claim is still in progress with
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
