//! What every check uses: fresh keys and fingerprints, and assertions that name the check
//! and the step that failed.

use super::*;

/// Text no other check, process or run uses: label, process id, wall-clock nanoseconds and
/// a per-process counter.
pub(super) fn unique(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{label}-{}-{nanos:x}-{n}", std::process::id())
}

/// A fresh key in [`NAMESPACE`].
#[track_caller]
pub(super) fn new_key(label: &str) -> Key {
    key_in(NAMESPACE, &unique(label))
}

#[track_caller]
pub(super) fn key_in(namespace: &'static str, text: &str) -> Key {
    match Key::new(namespace, text) {
        Ok(key) => key,
        Err(e) => panic!("could not build the key {text:?}: {e}"),
    }
}

/// A fingerprint no other call uses.
#[track_caller]
pub(super) fn fingerprint() -> Fingerprint {
    match Fingerprint::of(&unique("fingerprint")) {
        Ok(fp) => fp,
        Err(e) => panic!("could not fingerprint a string: {e}"),
    }
}

pub(super) fn output(outcome: Outcome, bytes: Vec<u8>) -> Output {
    Output {
        outcome,
        bytes: Bytes::from(bytes),
    }
}

pub(super) async fn claim<S: Store + ?Sized>(
    store: &S,
    key: &Key,
    fp: &Fingerprint,
    lease: Duration,
) -> Result<Claim, StoreError> {
    // As the protocol asks: `claim_now` first, so that what it answers is checked too.
    match store.claim_now(key, fp, lease) {
        Some(claim) => claim,
        None => store.claim(key, fp, lease).await,
    }
}

#[track_caller]
pub(super) fn claimed(claim: Result<Claim, StoreError>, check: &str, what: &str) -> Token {
    match claim {
        Ok(Claim::Claimed(token)) => token,
        other => panic!("[{check}] {what}: expected Claimed, got {}", brief(&other)),
    }
}

#[track_caller]
pub(super) fn completed(claim: Result<Claim, StoreError>, check: &str, what: &str) -> Record {
    match claim {
        Ok(Claim::Completed(record)) => record,
        other => panic!(
            "[{check}] {what}: expected Completed, got {}",
            brief(&other)
        ),
    }
}

#[track_caller]
pub(super) fn in_progress(claim: Result<Claim, StoreError>, check: &str, what: &str) -> Busy {
    match claim {
        Ok(Claim::InProgress(busy)) => busy,
        other => panic!(
            "[{check}] {what}: expected InProgress, got {}",
            brief(&other)
        ),
    }
}

/// A claim's `Debug` without megabytes of output bytes.
pub(super) fn brief(claim: &Result<Claim, StoreError>) -> String {
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
pub(super) fn ok(result: Result<(), StoreError>, check: &str, what: &str) {
    if let Err(e) = result {
        panic!("[{check}] {what}: expected Ok(()), got Err({e:?}): {e}");
    }
}

#[track_caller]
pub(super) fn lease_lost(result: Result<(), StoreError>, check: &str, what: &str) {
    match result {
        Err(StoreError::LeaseLost) => {}
        other => panic!("[{check}] {what}: expected Err(LeaseLost), got {other:?}"),
    }
}

#[track_caller]
pub(super) fn assert_record(got: &Record, expected: &Record, check: &str, what: &str) {
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

/// Claims `key` until it is `Claimed` (then releases it), polling every 10 ms while it is
/// in progress, until `deadline`; a panic naming `what` if it is still held then.
pub(super) async fn claimed_again_by<S: Store + ?Sized>(
    store: &S,
    key: &Key,
    deadline: tokio::time::Instant,
    check: &str,
    what: &str,
) {
    loop {
        match claim(store, key, &fingerprint(), LONG).await {
            Ok(Claim::Claimed(token)) => {
                ok(store.release(key, token).await, check, "release");
                return;
            }
            Ok(Claim::InProgress(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!(
                "[{check}] {what} still held the key 1 s later: {}",
                brief(&other)
            ),
        }
    }
}
