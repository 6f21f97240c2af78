//! Waiters: woken when the claim they wait on completes or goes away.

use super::*;

/// `Busy::waiter`, where a store offers one, stays pending while the claim is held and
/// resolves once the owner completes or releases it.
pub async fn waiter_wakes_on_change<S: Store + ?Sized + 'static>(store: &Arc<S>) {
    const CHECK: &str = "waiter_wakes_on_change";
    for finish in ["complete", "release"] {
        let key = new_key(CHECK);
        let owner = claimed(
            claim(&**store, &key, &fingerprint(), LONG).await,
            CHECK,
            "claim",
        );
        let busy = in_progress(
            claim(&**store, &key, &fingerprint(), LONG).await,
            CHECK,
            "claim while claimed",
        );
        let Some(mut waiter) = busy.waiter else {
            // The store has no notification; callers poll. Nothing to check.
            ok(store.release(&key, owner).await, CHECK, "release");
            return;
        };
        if tokio::time::timeout(Duration::from_millis(100), &mut waiter)
            .await
            .is_ok()
        {
            panic!("[{CHECK}] the waiter resolved while the claim was still held");
        }
        let changed = if finish == "complete" {
            store
                .complete(&key, owner, output(Outcome::Ok, b"done".to_vec()), LONG)
                .await
        } else {
            store.release(&key, owner).await
        };
        ok(changed, CHECK, finish);
        if tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .is_err()
        {
            panic!("[{CHECK}] the waiter did not resolve within 2 s of the owner's {finish}");
        }
    }
}
