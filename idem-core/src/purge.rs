//! Keeping a store's growth bounded: purge expired records on a timer.

use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

use crate::Store;

/// Spawns a tokio task that calls [`Store::purge_expired`] every `every` (first after one
/// period). Failures are logged and retried next period. Abort the handle to stop it.
///
/// Stores delete in bounded batches, so running this on every replica is safe.
pub fn purge_periodically<S: Store + ?Sized + 'static>(
    store: Arc<S>,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(every.max(Duration::from_millis(1)));
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await;
        loop {
            timer.tick().await;
            match store.purge_expired().await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "purged expired idempotency records"),
                Err(error) => tracing::warn!(%error, "purging expired idempotency records failed"),
            }
        }
    })
}

#[cfg(all(test, feature = "moka"))]
mod tests {
    use super::*;
    use crate::store::{Claim, Outcome, Output};
    use crate::{Fingerprint, Key, MemoryStore};

    #[tokio::test]
    async fn expired_records_go_away_without_being_asked_for() {
        let store = Arc::new(MemoryStore::new());
        let fp = Fingerprint::of(&()).unwrap();
        for i in 0..10u32 {
            let key = Key::new("purge::tests", &i).unwrap();
            let Claim::Claimed(token) = store
                .claim(&key, &fp, Duration::from_secs(5))
                .await
                .unwrap()
            else {
                panic!("fresh key");
            };
            let output = Output {
                outcome: Outcome::Ok,
                bytes: vec![1].into(),
            };
            store
                .complete(&key, token, output, Duration::from_millis(50))
                .await
                .unwrap();
        }
        let live = Key::new("purge::tests", "live").unwrap();
        store
            .claim(&live, &fp, Duration::from_secs(30))
            .await
            .unwrap();
        let purger = purge_periodically(store.clone(), Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(450)).await;
        purger.abort();
        assert_eq!(store.entry_count(), 1, "only the live claim is left");
    }
}
