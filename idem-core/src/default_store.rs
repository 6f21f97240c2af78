//! The process-wide store used by functions without `store = ...`.

use async_trait::async_trait;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::store::{Claim, Output, Store, Token};
use crate::{Fingerprint, Key, StoreError};

static DEFAULT: RwLock<Option<Arc<dyn Store>>> = RwLock::new(None);

/// Sets the store that `#[idempotent]` functions without `store = ...` use.
///
/// Call it once at startup; calling it again replaces the store for calls that start
/// afterwards (records in the old store are not moved).
pub fn set_default_store<S: Store + 'static>(store: S) {
    let store: Arc<dyn Store> = Arc::new(store);
    *DEFAULT.write().unwrap_or_else(|e| e.into_inner()) = Some(store);
}

/// The default store as it is when a call starts; every operation of a call that began
/// without one is [`StoreError::NoDefaultStore`].
pub struct DefaultStore(Option<Arc<dyn Store>>);

impl DefaultStore {
    /// Reads the current default store.
    pub fn current() -> Self {
        DefaultStore(DEFAULT.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn get(&self) -> Result<&dyn Store, StoreError> {
        self.0.as_deref().ok_or(StoreError::NoDefaultStore)
    }
}

#[async_trait]
impl Store for DefaultStore {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.get()?.claim(key, fingerprint, lease).await
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        self.get()?.renew(key, token, lease).await
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.get()?.complete(key, token, output, ttl).await
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        self.get()?.release(key, token).await
    }

    fn claim_now(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Option<Result<Claim, StoreError>> {
        match self.get() {
            Ok(store) => store.claim_now(key, fingerprint, lease),
            Err(e) => Some(Err(e)),
        }
    }

    fn release_on_drop(&self, key: &Key, token: Token) {
        if let Ok(store) = self.get() {
            store.release_on_drop(key, token);
        }
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.get()?.purge_expired().await
    }

    fn expires_records_itself(&self) -> bool {
        self.get().is_ok_and(|store| store.expires_records_itself())
    }

    fn max_output_len(&self) -> usize {
        self.get().map_or(crate::codec::MAX_ENCODED_LEN, |store| {
            store.max_output_len()
        })
    }
}
