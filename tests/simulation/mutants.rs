//! Stores broken on purpose, to show that the simulator catches what they break. Each
//! wraps a correct store and undoes one of its guarantees; none is part of the library.

use async_trait::async_trait;
use idem::store::{Claim, KeyDigest, Output, Token};
use idem::{Fingerprint, Key, Store, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Which guarantee a [`Mutant`] drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// `complete` and `release` from a stale token act on the newer owner's claim.
    Fencing,
    /// `renew` extends whichever claim holds the key, not only the token's own.
    RenewToken,
}

pub struct Mutant<S> {
    inner: S,
    broken: Broken,
    /// The newest claim of each key, as the inner store granted it.
    owners: Mutex<HashMap<KeyDigest, Token>>,
}

impl<S> Mutant<S> {
    pub fn new(inner: S, broken: Broken) -> Self {
        Mutant {
            inner,
            broken,
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// The owner to act for instead of `token`, when this mutant ignores the token.
    fn other_owner(&self, key: &Key, token: Token, broken: Broken) -> Option<Token> {
        if self.broken != broken {
            return None;
        }
        let owner = self.owners.lock().unwrap().get(key.digest()).copied();
        owner.filter(|owner| *owner != token)
    }
}

#[async_trait]
impl<S: Store> Store for Mutant<S> {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let claim = self.inner.claim(key, fingerprint, lease).await;
        if let Ok(Claim::Claimed(token)) = &claim {
            self.owners.lock().unwrap().insert(*key.digest(), *token);
        }
        claim
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        match self.inner.renew(key, token, lease).await {
            Err(StoreError::LeaseLost) => match self.other_owner(key, token, Broken::RenewToken) {
                Some(owner) => self.inner.renew(key, owner, lease).await,
                None => Err(StoreError::LeaseLost),
            },
            other => other,
        }
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match self.inner.complete(key, token, output.clone(), ttl).await {
            Err(StoreError::LeaseLost) => match self.other_owner(key, token, Broken::Fencing) {
                Some(owner) => self.inner.complete(key, owner, output, ttl).await,
                None => Err(StoreError::LeaseLost),
            },
            other => other,
        }
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        match self.inner.release(key, token).await {
            Err(StoreError::LeaseLost) => match self.other_owner(key, token, Broken::Fencing) {
                Some(owner) => self.inner.release(key, owner).await,
                None => Err(StoreError::LeaseLost),
            },
            other => other,
        }
    }

    fn release_on_drop(&self, key: &Key, token: Token) {
        self.inner.release_on_drop(key, token);
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.inner.purge_expired().await
    }
}
