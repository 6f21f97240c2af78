//! 64 tasks call one `#[idempotent]` function with one key at once, round after round:
//! the body runs exactly once per round, and every caller gets its value.

use idem::idempotent;
use idem::redis::RedisStore;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Barrier;

const TASKS: usize = 64;

#[idempotent(key = key, store = store, skip(runs), on_conflict = wait, wait_timeout = "30s")]
async fn once(store: &RedisStore, runs: &AtomicUsize, key: &str) -> Result<String, idem::Error> {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(format!("run {n}"))
}

/// `rounds` races of 64 tasks, each round on its own key `{label}-{round}`.
pub(crate) async fn racers_run_the_body_once(store: &Arc<RedisStore>, label: &str, rounds: usize) {
    for round in 0..rounds {
        let runs = Arc::new(AtomicUsize::new(0));
        let key = format!("{label}-{round}");
        let barrier = Arc::new(Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (store, runs, key, barrier) =
                    (store.clone(), runs.clone(), key.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    once(&store, &runs, &key).await
                })
            })
            .collect();
        for task in tasks {
            let value = task.await.expect("racer panicked").expect("racer failed");
            assert_eq!(value, "run 1", "round {round}");
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "round {round}: body executions"
        );
    }
}
