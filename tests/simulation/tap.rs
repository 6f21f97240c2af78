//! [`Tap`]: one caller's view of the (faulty) store: what its claims answered, and which
//! of its claims a fault delayed or failed — what the invariants need to tell an allowed
//! second run from a broken protocol.

use async_trait::async_trait;
use idem::store::{Claim, Output, Token};
use idem::{Fingerprint, Key, Store, StoreError};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use super::history::{Answer, History};

pub struct Tap<'a, S> {
    pub store: &'a S,
    pub caller: usize,
    pub history: &'a Mutex<History>,
}

impl<S> Tap<'_, S> {
    fn started(&self, key: &Key, token: Token) -> Instant {
        self.history
            .lock()
            .unwrap()
            .facts(key.digest(), token)
            .in_flight += 1;
        Instant::now()
    }

    /// Notes what a fault did to an operation of `token`: it took time (every operation of
    /// the simulated store is instant otherwise) or failed.
    fn note<T>(&self, key: &Key, token: Token, started: Instant, result: &Result<T, StoreError>) {
        let slow = Instant::now() > started;
        let failed = matches!(result, Err(e) if !matches!(e, StoreError::LeaseLost));
        let mut h = self.history.lock().unwrap();
        let facts = h.facts(key.digest(), token);
        facts.in_flight -= 1;
        facts.hindered |= slow || failed;
        if failed {
            h.callers[self.caller].store_failed = true;
        }
    }
}

#[async_trait]
impl<S: Store> Store for Tap<'_, S> {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let started = Instant::now();
        let result = self.store.claim(key, fingerprint, lease).await;
        let answer = match &result {
            Ok(Claim::Claimed(token)) => {
                let mut h = self.history.lock().unwrap();
                let facts = h.facts(key.digest(), *token);
                facts.delivered = true;
                // A claim answered late started its lease before its caller knew.
                facts.hindered |= Instant::now() > started;
                Answer::Claimed(*token)
            }
            Ok(Claim::Completed(record)) => Answer::Completed(record.fingerprint),
            Ok(Claim::InProgress(busy)) => Answer::InProgress(busy.fingerprint),
            Err(_) => {
                self.history.lock().unwrap().callers[self.caller].store_failed = true;
                Answer::Failed
            }
        };
        self.history.lock().unwrap().callers[self.caller].last_answer = Some(answer);
        result
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        let started = self.started(key, token);
        let result = self.store.renew(key, token, lease).await;
        self.note(key, token, started, &result);
        result
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let started = self.started(key, token);
        let result = self.store.complete(key, token, output, ttl).await;
        self.note(key, token, started, &result);
        result
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let started = self.started(key, token);
        let result = self.store.release(key, token).await;
        self.note(key, token, started, &result);
        result
    }

    fn release_on_drop(&self, key: &Key, token: Token) {
        self.history
            .lock()
            .unwrap()
            .facts(key.digest(), token)
            .drop_sent = true;
        self.store.release_on_drop(key, token);
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.store.purge_expired().await
    }

    fn max_output_len(&self) -> usize {
        self.store.max_output_len()
    }
}
