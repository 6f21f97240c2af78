//! Releasing the claim of a cancelled call.

use idem_core::{Key, Store, Token};

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
