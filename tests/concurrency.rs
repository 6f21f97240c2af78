//! 1000 tasks race on one key on a multi-thread runtime; the body must run exactly once.

mod support;

use idem::{MemoryStore, idempotent};
use std::sync::Arc;
use std::time::Duration;
use support::{AppError, Calls};
use tokio::sync::Barrier;

const TASKS: usize = 1000;

#[idempotent(key = key, store = store, skip(calls), on_conflict = wait, wait_timeout = "30s")]
async fn waiting(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
) -> Result<(usize, String), AppError> {
    let n = calls.hit();
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok((n, format!("done by execution {n}")))
}

#[idempotent(key = key, store = store, skip(calls))]
async fn rejecting(store: &MemoryStore, calls: &Calls, key: &str) -> Result<usize, AppError> {
    let n = calls.hit();
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(n)
}

async fn race<T, F, Fut>(call: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let barrier = barrier.clone();
            let call = call();
            tokio::spawn(async move {
                barrier.wait().await;
                call.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(TASKS);
    for task in tasks {
        results.push(task.await.expect("task panicked"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_runs_once_and_everyone_gets_the_value() {
    let store = Arc::new(MemoryStore::new());
    let calls = Arc::new(Calls::default());
    for round in 0..3 {
        let key = format!("wait-{round}");
        let results = race(|| {
            let (store, calls, key) = (store.clone(), calls.clone(), key.clone());
            async move { waiting(&store, &calls, &key).await }
        })
        .await;
        assert_eq!(
            calls.count(),
            round + 1,
            "the body ran more than once in round {round}"
        );
        let first = results[0].as_ref().expect("wait must not fail").clone();
        for result in &results {
            assert_eq!(result.as_ref().expect("wait must not fail"), &first);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reject_runs_once_and_the_others_get_the_value_or_in_progress() {
    let store = Arc::new(MemoryStore::new());
    let calls = Arc::new(Calls::default());
    for round in 0..3 {
        let key = format!("reject-{round}");
        let results = race(|| {
            let (store, calls, key) = (store.clone(), calls.clone(), key.clone());
            async move { rejecting(&store, &calls, &key).await }
        })
        .await;
        assert_eq!(
            calls.count(),
            round + 1,
            "the body ran more than once in round {round}"
        );
        let mut values = 0;
        let mut in_progress = 0;
        for result in results {
            match result {
                Ok(n) => {
                    assert_eq!(n, round + 1);
                    values += 1;
                }
                Err(AppError::Idem(idem::Error::InProgress)) => in_progress += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(values >= 1 && values + in_progress == TASKS);
        assert!(
            in_progress > 0,
            "with a 50ms body some racers must have been rejected"
        );
    }
}
