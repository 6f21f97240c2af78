//! Cancellation: releasing the claim of a cancelled call, and claims that a cancelled
//! caller cannot leave behind.

use idem_core::{Claim, Key, Store, StoreError, Token};
use std::future::Future;
use tokio::sync::oneshot;

/// Releases `token`'s claim on a task of the current runtime, for `Store::release_on_drop`
/// (which cannot wait). Without a runtime, or if the release fails, the lease expires.
pub(crate) fn release_in_background<S: Store + Clone + 'static>(
    store: &S,
    key: &Key,
    token: Token,
) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let store = store.clone();
        let key = key.clone();
        runtime.spawn(async move {
            if let Err(e) = store.release(&key, token).await {
                tracing::debug!(%e, "release after cancellation failed; the lease will expire");
            }
        });
    }
}

/// Runs `claim` (a plain-mode claim of `key` on `store`) to completion on a task of its own
/// and returns its result, so that the claim is cancel-safe.
///
/// Dropping a future that awaits a statement does not stop the statement: the server still
/// runs it — an INSERT blocked behind another transaction's lock on the key lands when that
/// transaction ends — and nobody would own the claim it wrote until its lease ran out.
/// Here the statements always finish, and a claim whose caller is gone by then is released
/// at once: by the task if the caller left first, else by the receiving end's `Drop`
/// (the result arrived but was never read). The fencing token is made before the insert,
/// on the client, so the task knows what to release. Costs a spawn and a oneshot per claim
/// (BENCHMARKS.md: not visible next to a round trip).
pub(crate) async fn claim_detached<S, F>(
    store: &S,
    key: &Key,
    claim: F,
) -> Result<Claim, StoreError>
where
    S: Store + Clone + 'static,
    F: Future<Output = Result<Claim, StoreError>> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return claim.await;
    };
    let (send, receive) = oneshot::channel();
    let owner = store.clone();
    let owned_key = key.clone();
    runtime.spawn(async move {
        let claim = claim.await;
        if let Err(Ok(Claim::Claimed(token))) = send.send(claim) {
            // The caller was cancelled while the claim ran: nobody will run the body,
            // complete or release this claim.
            if let Err(e) = owner.release(&owned_key, token).await {
                tracing::debug!(%e, "release of a cancelled claim failed; the lease will expire");
            }
        }
    });
    let mut pending = Pending {
        receive,
        store,
        key,
    };
    (&mut pending.receive).await.unwrap_or_else(|_| {
        Err(StoreError::backend(
            "claim",
            "the claim's task ended without a result",
        ))
    })
}

/// The receiving end of a detached claim, for its `Drop`.
struct Pending<'a, S: Store + Clone + 'static> {
    receive: oneshot::Receiver<Result<Claim, StoreError>>,
    store: &'a S,
    key: &'a Key,
}

impl<S: Store + Clone + 'static> Drop for Pending<'_, S> {
    fn drop(&mut self) {
        // Closing first: from here on the task's send fails (and the task releases), and a
        // result sent before but never read (the caller was dropped between the send and
        // its next poll) is still here to release. After a read this finds nothing.
        self.receive.close();
        if let Ok(Ok(Claim::Claimed(token))) = self.receive.try_recv() {
            release_in_background(self.store, self.key, token);
        }
    }
}
