//! Panics, cancellations, long bodies and crashed owners.

mod support;

use async_trait::async_trait;
use idem::store::{Claim, Output, Token};
use idem::{Fingerprint, Key, MemoryStore, Store, StoreError, idempotent};
use std::sync::Arc;
use std::time::Duration;
use support::{AppError, Calls};

#[idempotent(key = key, store = store, skip(calls, delay, panic))]
async fn work(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
    delay: Duration,
    panic: bool,
) -> Result<usize, AppError> {
    let n = calls.hit();
    tokio::time::sleep(delay).await;
    assert!(!panic, "the body panicked");
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_releases_the_claim_and_resumes() {
    let store = Arc::new(MemoryStore::new());
    let calls = Arc::new(Calls::default());
    let task = {
        let (store, calls) = (store.clone(), calls.clone());
        tokio::spawn(async move { work(&store, &calls, "k", Duration::ZERO, true).await })
    };
    let err = task.await.unwrap_err();
    assert!(err.is_panic(), "the panic must resume after the release");
    // No waiting for the 30s lease: the claim was released.
    assert_eq!(
        work(&store, &calls, "k", Duration::ZERO, false)
            .await
            .unwrap(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_future_releases_the_claim() {
    let store = MemoryStore::new();
    let calls = Calls::default();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        work(&store, &calls, "k", Duration::from_secs(60), false),
    )
    .await;
    assert!(cancelled.is_err(), "the call should have timed out");
    // The default lease is 30s; the next call runs at once because the drop released it.
    assert_eq!(
        work(&store, &calls, "k", Duration::ZERO, false)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        work(&store, &calls, "k", Duration::ZERO, false)
            .await
            .unwrap(),
        2
    );
}

#[idempotent(key = key, store = store, skip(calls, delay), lease = "150ms")]
async fn short_lease<S: Store>(
    store: &S,
    calls: &Calls,
    key: &str,
    delay: Duration,
) -> Result<usize, AppError> {
    let n = calls.hit();
    tokio::time::sleep(delay).await;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_keeps_a_long_body_from_being_taken_over() {
    let store = Arc::new(MemoryStore::new());
    let calls = Arc::new(Calls::default());
    let owner = {
        let (store, calls) = (store.clone(), calls.clone());
        tokio::spawn(
            async move { short_lease(&*store, &calls, "k", Duration::from_millis(800)).await },
        )
    };
    // Well past the 150ms lease, several times over.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        let err = short_lease(&*store, &calls, "k", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AppError::Idem(idem::Error::InProgress)),
            "{err:?}"
        );
    }
    assert_eq!(owner.await.unwrap().unwrap(), 1);
    assert_eq!(
        short_lease(&*store, &calls, "k", Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(calls.count(), 1);
}

/// A store whose heartbeats never arrive: the owner is as good as crashed.
struct NoHeartbeat(MemoryStore);

#[async_trait]
impl Store for NoHeartbeat {
    async fn claim(
        &self,
        key: &Key,
        fp: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.0.claim(key, fp, lease).await
    }
    async fn renew(&self, _: &Key, _: Token, _: Duration) -> Result<(), StoreError> {
        Ok(())
    }
    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.0.complete(key, token, output, ttl).await
    }
    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        self.0.release(key, token).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.0.purge_expired().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_owner_is_taken_over_and_its_late_result_is_fenced_off() {
    let store = Arc::new(NoHeartbeat(MemoryStore::new()));
    let calls = Arc::new(Calls::default());
    let stalled = {
        let (store, calls) = (store.clone(), calls.clone());
        tokio::spawn(
            async move { short_lease(&*store, &calls, "k", Duration::from_millis(600)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The lease expired without renewal: this call takes the record over and runs.
    assert_eq!(
        short_lease(&*store, &calls, "k", Duration::ZERO)
            .await
            .unwrap(),
        2
    );
    // The stalled owner finishes later; it gets its own result, but the fence keeps it out
    // of the store.
    assert_eq!(stalled.await.unwrap().unwrap(), 1);
    assert_eq!(
        short_lease(&*store, &calls, "k", Duration::ZERO)
            .await
            .unwrap(),
        2,
        "the newer owner's record stays"
    );
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn the_fence_refuses_a_stale_token() {
    let store = MemoryStore::new();
    let key = Key::new("faults::fence", "k").unwrap();
    let fp = Fingerprint::of(&1u8).unwrap();
    let Claim::Claimed(old) = store
        .claim(&key, &fp, Duration::from_millis(100))
        .await
        .unwrap()
    else {
        panic!("fresh key must be claimed");
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let Claim::Claimed(new) = store
        .claim(&key, &fp, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("expired claim must be taken over");
    };
    assert_ne!(old, new);
    let output = |b: &'static [u8]| Output {
        outcome: idem::store::Outcome::Ok,
        bytes: b.into(),
    };
    let late = store
        .complete(&key, old, output(b"old"), Duration::from_secs(60))
        .await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    store
        .complete(&key, new, output(b"new"), Duration::from_secs(60))
        .await
        .unwrap();
    match store
        .claim(&key, &fp, Duration::from_secs(30))
        .await
        .unwrap()
    {
        Claim::Completed(record) => assert_eq!(&record.output.bytes[..], b"new"),
        other => panic!("expected the new owner's record, got {other:?}"),
    }
}

/// A `MemoryStore` whose `complete` fails on demand — before applying (the database was
/// unreachable) or after (the reply was lost) — and which can hold outputs of at most
/// `max_output` bytes, refusing larger ones as MariaDB refuses a packet over
/// `max_allowed_packet`.
struct Flaky {
    inner: MemoryStore,
    /// How the next `complete` calls fail, first to last.
    failures: std::sync::Mutex<Vec<Failure>>,
    max_output: usize,
}

#[derive(Clone, Copy)]
enum Failure {
    Unreachable,
    LostReply,
}

impl Flaky {
    fn new(failures: Vec<Failure>, max_output: usize) -> Self {
        Flaky {
            inner: MemoryStore::new(),
            failures: std::sync::Mutex::new(failures),
            max_output,
        }
    }
}

#[async_trait]
impl Store for Flaky {
    async fn claim(
        &self,
        key: &Key,
        fp: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.inner.claim(key, fp, lease).await
    }
    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        self.inner.renew(key, token, lease).await
    }
    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if output.bytes.len() > self.max_output {
            return Err(StoreError::backend("complete", "packet too large"));
        }
        let failure = {
            let mut failures = self.failures.lock().unwrap();
            (!failures.is_empty()).then(|| failures.remove(0))
        };
        match failure {
            None => self.inner.complete(key, token, output, ttl).await,
            Some(Failure::Unreachable) => Err(StoreError::backend("complete", "unreachable")),
            Some(Failure::LostReply) => {
                self.inner.complete(key, token, output, ttl).await?;
                Err(StoreError::backend("complete", "connection reset"))
            }
        }
    }
    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.inner.purge_expired().await
    }
    fn max_output_len(&self) -> usize {
        self.max_output
    }
}

#[idempotent(key = key, store = store, skip(calls, len))]
async fn sized(store: &Flaky, calls: &Calls, key: &str, len: usize) -> Result<Vec<u8>, AppError> {
    calls.hit();
    Ok(vec![7; len])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_complete_is_retried_until_it_records() {
    use Failure::{LostReply, Unreachable};
    let store = Flaky::new(
        vec![Unreachable, Unreachable, LostReply, Unreachable],
        1 << 20,
    );
    let calls = Calls::default();
    assert_eq!(sized(&store, &calls, "k", 3).await.unwrap(), vec![7; 3]);
    // Recorded in the end (the lost reply's write counts): the retry replays at once,
    // instead of finding the claim held until its lease runs out and then running again.
    assert_eq!(sized(&store, &calls, "k", 3).await.unwrap(), vec![7; 3]);
    assert_eq!(calls.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_the_store_cannot_hold_is_refused_and_the_claim_released() {
    let store = Flaky::new(Vec::new(), 1024);
    let calls = Calls::default();
    let err = sized(&store, &calls, "k", 4096)
        .await
        .map(|v| v.len())
        .unwrap_err();
    match err.idem() {
        Some(idem::Error::Codec(e)) => {
            assert!(e.to_string().contains("more than the 1024"), "{e}")
        }
        other => panic!("expected Error::Codec, got {other:?}"),
    }
    // Released, not held for the lease: the next call runs (and records, this time).
    assert_eq!(sized(&store, &calls, "k", 1000).await.unwrap().len(), 1000);
    assert_eq!(sized(&store, &calls, "k", 1000).await.unwrap().len(), 1000);
    assert_eq!(calls.count(), 2);
}
