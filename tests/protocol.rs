//! The protocol without the macro (`idem::protocol::Idempotent`), as an adapter (an HTTP
//! layer, a consumer loop) uses it: what each call did, and how long a duplicate should
//! wait before it retries.

use idem::protocol::{Disposition, Idempotent};
use idem::{Error, Fingerprint, Key, MemoryStore, OnConflict, Options};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const NAMESPACE: &str = "tests.protocol";

fn key(id: &str) -> Key {
    Key::new(NAMESPACE, id).unwrap()
}

#[tokio::test]
async fn reports_executed_then_replayed() {
    let store = MemoryStore::new();
    let charge = Idempotent::<u64, Error>::new(Options::new(NAMESPACE));
    let runs = AtomicU32::new(0);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let fingerprint = Fingerprint::of(&500_u64).unwrap();
        let (result, disposition) = charge
            .run_reported(&store, key("p-1"), fingerprint, async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(500)
            })
            .await;
        assert_eq!(result.unwrap(), 500);
        seen.push(disposition);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        seen,
        [
            Disposition::Executed,
            Disposition::Replayed,
            Disposition::Replayed
        ]
    );
}

#[tokio::test]
async fn a_duplicate_in_progress_is_told_the_owners_remaining_lease() {
    let store = Arc::new(MemoryStore::new());
    let lease = Duration::from_secs(30);
    let charge = Arc::new(Idempotent::<u64, Error>::new(Options {
        lease,
        ..Options::new(NAMESPACE)
    }));
    let (started, wait_started) = tokio::sync::oneshot::channel();
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let owner = tokio::spawn({
        let (store, charge) = (store.clone(), charge.clone());
        async move {
            let fingerprint = Fingerprint::of(&1_u64).unwrap();
            charge
                .run_reported(&*store, key("p-2"), fingerprint, async {
                    started.send(()).unwrap();
                    finished.await.unwrap();
                    Ok(1)
                })
                .await
        }
    });
    wait_started.await.unwrap();
    let fingerprint = Fingerprint::of(&1_u64).unwrap();
    let (result, disposition) = charge
        .run_reported(&*store, key("p-2"), fingerprint, async {
            panic!("the body of a duplicate must not run")
        })
        .await;
    assert!(matches!(result, Err(Error::InProgress)), "{result:?}");
    match disposition {
        Disposition::InProgress {
            retry_after: Some(retry_after),
        } => assert!(
            retry_after <= lease && retry_after > lease / 2,
            "{retry_after:?}"
        ),
        other => panic!("expected InProgress with the owner's lease, got {other:?}"),
    }
    finish.send(()).unwrap();
    let (result, disposition) = owner.await.unwrap();
    assert_eq!((result.unwrap(), disposition), (1, Disposition::Executed));
}

#[tokio::test]
async fn refusals_before_the_body_are_reported_as_such() {
    let store = MemoryStore::new();
    let charge = Idempotent::<u64, Error>::new(Options {
        on_conflict: OnConflict::Reject,
        ..Options::new(NAMESPACE)
    });
    let first = Fingerprint::of(&1_u64).unwrap();
    charge
        .run(&store, key("p-3"), first, async { Ok(1) })
        .await
        .unwrap();
    let other = Fingerprint::of(&2_u64).unwrap();
    let (result, disposition) = charge
        .run_reported(&store, key("p-3"), other, async {
            panic!("a mismatch must not run the body")
        })
        .await;
    assert!(matches!(result, Err(Error::PayloadMismatch)), "{result:?}");
    assert_eq!(disposition, Disposition::Refused);
}
