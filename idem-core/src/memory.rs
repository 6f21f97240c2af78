//! `MemoryStore`: records in a moka cache, for one process.

use async_trait::async_trait;
use moka::future::Cache;
use moka::ops::compute::Op;
use moka::policy::{EvictionPolicy, Expiry};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::store::{Busy, Claim, Output, Record, Store, Token, Waiter};
use crate::{Fingerprint, Key, KeyDigest, StoreError};

/// How long moka keeps an entry past its deadline, so that `purge_expired` sees (and
/// counts) what it removes; every read checks the deadline itself.
const GRACE: Duration = Duration::from_secs(1);

/// The in-memory store: exactly-once within one process.
///
/// Built on moka's `future::Cache`: claim, complete, renew and release are atomic per key
/// (`and_compute_with`); a replay is one lock-free read. Entries expire with their lease
/// or TTL, and at most `max_capacity` records are kept — past that the least recently used
/// are evicted, so size it above the number of keys live within a TTL. Calls waiting on
/// an in-progress key are woken when it completes, not polled.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<KeyDigest, Arc<Slot>>,
    tokens: Arc<AtomicU64>,
}

enum Slot {
    InProgress {
        token: Token,
        fingerprint: Fingerprint,
        lease_until: Instant,
        /// Set to `true` (and so waking waiters) when the claim completes or goes away.
        changed: Arc<watch::Sender<bool>>,
    },
    Completed {
        record: Record,
        expires_at: Instant,
    },
}

impl Slot {
    fn in_progress(token: Token, fingerprint: Fingerprint, lease_until: Instant) -> Slot {
        Slot::InProgress {
            token,
            fingerprint,
            lease_until,
            changed: Arc::new(watch::Sender::new(false)),
        }
    }

    fn deadline(&self) -> Instant {
        match self {
            Slot::InProgress { lease_until, .. } => *lease_until,
            Slot::Completed { expires_at, .. } => *expires_at,
        }
    }

    fn is_live(&self, now: Instant) -> bool {
        self.deadline() > now
    }

    /// The fingerprint and waiters of the claim `token` holds, if it still holds it.
    fn owned_by(&self, token: Token) -> Option<(&Fingerprint, &Arc<watch::Sender<bool>>)> {
        match self {
            Slot::InProgress {
                token: owner,
                fingerprint,
                changed,
                ..
            } if *owner == token => Some((fingerprint, changed)),
            _ => None,
        }
    }
}

struct UntilDeadline;

impl Expiry<KeyDigest, Arc<Slot>> for UntilDeadline {
    fn expire_after_create(&self, _: &KeyDigest, slot: &Arc<Slot>, _: Instant) -> Option<Duration> {
        Some(slot.deadline().saturating_duration_since(Instant::now()) + GRACE)
    }

    fn expire_after_update(
        &self,
        _: &KeyDigest,
        slot: &Arc<Slot>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.deadline().saturating_duration_since(Instant::now()) + GRACE)
    }
}

/// What a live record means to a claimer: a replay, or an owner to wait for.
fn live_claim(slot: &Slot, now: Instant) -> Claim {
    match slot {
        Slot::Completed { record, .. } => Claim::Completed(record.clone()),
        Slot::InProgress {
            fingerprint,
            lease_until,
            changed,
            ..
        } => {
            let mut rx = changed.subscribe();
            Claim::InProgress(Busy {
                fingerprint: *fingerprint,
                lease_remaining: Some(lease_until.saturating_duration_since(now)),
                waiter: Some(Waiter::new(async move {
                    // Finished between our read and the subscription: no wait at all.
                    if !*rx.borrow_and_update() {
                        let _ = rx.changed().await;
                    }
                })),
            })
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store holding at most 1,000,000 records.
    pub fn new() -> Self {
        Self::with_capacity(1_000_000)
    }

    /// A store holding at most `max_capacity` records (least recently used evicted first).
    pub fn with_capacity(max_capacity: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_capacity)
            // LRU admits every new entry; TinyLFU could refuse a fresh claim when full.
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(UntilDeadline)
            .build();
        MemoryStore {
            cache,
            tokens: Arc::new(AtomicU64::new(1)),
        }
    }

    /// How many records it holds (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    fn next_token(&self) -> Token {
        Token::new(self.tokens.fetch_add(1, Ordering::Relaxed))
    }

    /// Claims a key whose record has expired, unless another claimer just did.
    async fn take_over(
        &self,
        digest: KeyDigest,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let mut claim = None;
        self.cache
            .entry(digest)
            .and_compute_with(|entry| {
                let now = Instant::now();
                let op = match entry.map(|e| e.into_value()) {
                    Some(slot) if slot.is_live(now) => {
                        claim = Some(live_claim(&slot, now));
                        Op::Nop
                    }
                    stale => {
                        // Waiters on an expired claim are woken to claim again.
                        if let Some(Slot::InProgress { changed, .. }) = stale.as_deref() {
                            changed.send_replace(true);
                        }
                        let token = self.next_token();
                        claim = Some(Claim::Claimed(token));
                        Op::Put(Arc::new(Slot::in_progress(
                            token,
                            *fingerprint,
                            now + lease,
                        )))
                    }
                };
                std::future::ready(op)
            })
            .await;
        claim.ok_or_else(|| StoreError::backend("claim", "moka did not run the claim"))
    }

    /// Replaces the record `token` owns with `next` (or removes it), waking waiters.
    async fn fenced(
        &self,
        key: &KeyDigest,
        token: Token,
        next: impl FnOnce(&Fingerprint) -> Option<Slot>,
    ) -> Result<(), StoreError> {
        let mut owned = false;
        self.cache
            .entry(*key)
            .and_compute_with(|entry| {
                let op = match entry.as_ref().and_then(|e| e.value().owned_by(token)) {
                    Some((fingerprint, changed)) => {
                        owned = true;
                        changed.send_replace(true);
                        match next(fingerprint) {
                            Some(slot) => Op::Put(Arc::new(slot)),
                            None => Op::Remove,
                        }
                    }
                    None => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        if owned {
            Ok(())
        } else {
            Err(StoreError::LeaseLost)
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let digest = *key.digest();
        // One atomic insert-if-absent: a fresh key is claimed by it, a replay is a lookup
        // (no per-key compute lock on either path).
        let mut token = None;
        // `entry_by_ref` allocates the cache's copy of the key only when it inserts.
        let entry = self
            .cache
            .entry_by_ref(&digest)
            .or_insert_with(async {
                let fresh = self.next_token();
                token = Some(fresh);
                Arc::new(Slot::in_progress(
                    fresh,
                    *fingerprint,
                    Instant::now() + lease,
                ))
            })
            .await;
        if entry.is_fresh()
            && let Some(token) = token
        {
            return Ok(Claim::Claimed(token));
        }
        let now = Instant::now();
        let slot = entry.into_value();
        if slot.is_live(now) {
            return Ok(live_claim(&slot, now));
        }
        self.take_over(digest, fingerprint, lease).await
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        let mut renewed = false;
        self.cache
            .entry(*key.digest())
            .and_compute_with(|entry| {
                let op = match entry.as_ref().map(|e| &**e.value()) {
                    Some(Slot::InProgress {
                        token: owner,
                        fingerprint,
                        changed,
                        ..
                    }) if *owner == token => {
                        renewed = true;
                        Op::Put(Arc::new(Slot::InProgress {
                            token,
                            fingerprint: *fingerprint,
                            lease_until: Instant::now() + lease,
                            changed: changed.clone(),
                        }))
                    }
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        if renewed {
            Ok(())
        } else {
            Err(StoreError::LeaseLost)
        }
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.fenced(key.digest(), token, |fingerprint| {
            Some(Slot::Completed {
                record: Record {
                    fingerprint: *fingerprint,
                    output,
                },
                expires_at: Instant::now() + ttl,
            })
        })
        .await
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        self.fenced(key.digest(), token, |_| None).await
    }

    fn release_on_drop(&self, key: &Key, token: Token) {
        let store = self.clone();
        let digest = *key.digest();
        let mut release = Box::pin(async move {
            let _ = store.fenced(&digest, token, |_| None).await;
        });
        // Usually done in the first poll, so the next call finds the key free; else it
        // finishes on the runtime (and failing that, the lease expires).
        if release
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(release);
        }
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let now = Instant::now();
        let expired: Vec<KeyDigest> = self
            .cache
            .iter()
            .filter(|(_, slot)| !slot.is_live(now))
            .map(|(key, _)| *key)
            .collect();
        let mut purged = 0;
        for key in expired {
            let mut removed = false;
            self.cache
                .entry(key)
                .and_compute_with(|entry| {
                    let op = match entry {
                        Some(e) if !e.value().is_live(Instant::now()) => {
                            removed = true;
                            Op::Remove
                        }
                        _ => Op::Nop,
                    };
                    std::future::ready(op)
                })
                .await;
            purged += u64::from(removed);
        }
        self.cache.run_pending_tasks().await;
        Ok(purged)
    }
}
