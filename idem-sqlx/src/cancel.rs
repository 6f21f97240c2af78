//! Cancellation: releasing the claim of a cancelled call, and claims that a cancelled
//! caller cannot leave behind.

use idem_core::store::Token;
use idem_core::{Key, Store, StoreError};
use std::future::Future;

use crate::claim::NewClaim;

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

/// Logs what a release after a cancelled claim did: `LeaseLost` means the claim's statement
/// wrote nothing (or another call took the key since), so there was nothing to release.
pub(crate) fn released(result: Result<(), StoreError>) {
    match result {
        Ok(()) | Err(StoreError::LeaseLost) => {}
        Err(e) => {
            tracing::debug!(%e, "release after a cancelled claim failed; the lease will expire")
        }
    }
}

/// A store that can release a claim with a statement on a given connection: the one its
/// cancelled claim ran on.
pub(crate) trait ReleaseAfter: Store + Clone + 'static {
    /// A pooled connection.
    type Conn: Send + 'static;

    /// Releases each of `claims` (a key and its token) on `conn`, in order, best effort.
    fn release_after(
        self,
        conn: Self::Conn,
        claims: Vec<(Key, Token)>,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// The pooled connection of plain-mode claims (one call's, or a batch's), which makes them
/// cancel-safe.
///
/// Dropping a future that awaits a statement does not stop the statement: the server still
/// runs it — an `INSERT` blocked behind another transaction's lock on the key lands when
/// that transaction ends — and nobody would own the claim it wrote until its lease ran out.
/// So if the claims are dropped before [`disarm`](ClaimConnection::disarm), this releases
/// their tokens (made on the client, before the insert) on a task, *on the same
/// connection*: a connection runs its statements in order, so the releases run after
/// whatever the claims left in flight there, and remove the claims that statement wrote
/// (else they find nothing). Costs nothing unless cancelled: no task, no channel. (Running
/// the claim on a task of its own is cancel-safe too, but the spawn and join cost a
/// measurable share of the cheapest claim, an SQLite replay; `measure_cancel_safe_claim_cost`
/// in `sqlite.rs` measures it, and BENCHMARKS.md has the figures.)
pub(crate) struct ClaimConnection<'a, S: ReleaseAfter> {
    store: &'a S,
    claims: &'a [NewClaim<'a>],
    conn: Option<S::Conn>,
}

impl<'a, S: ReleaseAfter> ClaimConnection<'a, S> {
    /// Guards `claims`, about to run on `conn`.
    pub(crate) fn new(store: &'a S, claims: &'a [NewClaim<'a>], conn: S::Conn) -> Self {
        ClaimConnection {
            store,
            claims,
            conn: Some(conn),
        }
    }

    /// The connection, until [`disarm`](ClaimConnection::disarm).
    pub(crate) fn conn(&mut self) -> Option<&mut S::Conn> {
        self.conn.as_mut()
    }

    /// The claims returned to their caller: the connection, theirs no more.
    pub(crate) fn disarm(mut self) -> Option<S::Conn> {
        self.conn.take()
    }
}

impl<S: ReleaseAfter> Drop for ClaimConnection<'_, S> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let claims = self
                .claims
                .iter()
                .map(|c| (c.key.clone(), Token::new(c.token as u64)))
                .collect();
            runtime.spawn(self.store.clone().release_after(conn, claims));
        }
    }
}
