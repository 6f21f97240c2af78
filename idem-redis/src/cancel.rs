//! Cancellation: a claim the server applied after its caller stopped listening is released.

use idem_core::store::Token;
use idem_core::{Key, Store, StoreError};

use crate::RedisStore;

/// Releases `token`'s claim of `key` on a task of the current runtime, for
/// `Store::release_on_drop` and [`ClaimGuard`] (which cannot wait). Without a runtime, or if
/// the release fails, the lease expires.
pub(crate) fn release_in_background(store: &RedisStore, key: &Key, token: Token) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let store = store.clone();
        let key = key.clone();
        runtime.spawn(async move {
            match store.release(&key, token).await {
                // LeaseLost: the claim never landed (or was taken over): nothing to release.
                Ok(()) | Err(StoreError::LeaseLost) => {}
                Err(e) => {
                    tracing::debug!(%e, "release after cancellation failed; the lease will expire")
                }
            }
        });
    }
}

/// Guards a claim between sending its script and reading the reply.
///
/// Dropping a future that awaits a reply does not unsend the request: once the script is
/// queued on the connection, Redis runs it and may create the record, which nobody would
/// own until its lease ran out. The token is made here, before the script is sent, so if the
/// guard is dropped before [`disarm`](ClaimGuard::disarm) it releases exactly that token on
/// a task. The release goes through the same multiplexed connection, so Redis runs it after
/// the claim; if the claim never reached Redis it finds nothing to release. (On a cluster
/// both go to the primary that owns the key's slot, over its one connection; should the
/// connection drop or the slot move between the two, the release may miss, and the lease
/// bounds the damage.) Costs nothing unless cancelled.
pub(crate) struct ClaimGuard<'a> {
    store: &'a RedisStore,
    key: &'a Key,
    token: Token,
    armed: bool,
}

impl<'a> ClaimGuard<'a> {
    /// Guards the claim of `key` with `token` that is about to be sent.
    pub(crate) fn new(store: &'a RedisStore, key: &'a Key, token: Token) -> Self {
        ClaimGuard {
            store,
            key,
            token,
            armed: true,
        }
    }

    /// The reply arrived: the caller owns what it says.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            release_in_background(self.store, self.key, self.token);
        }
    }
}
