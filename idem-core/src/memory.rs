//! `MemoryStore`: records in a moka cache, for one process.

use async_trait::async_trait;
use moka::future::Cache;
use moka::policy::{EvictionPolicy, Expiry};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, watch};

use crate::store::{Busy, Claim, Output, Record, Store, Token, Waiter};
use crate::{Fingerprint, Key, KeyDigest, StoreError};

/// How long moka keeps an entry past its deadline, so that `purge_expired` sees (and
/// counts) what it removes; every read checks the deadline itself.
const GRACE: Duration = Duration::from_secs(1);

/// The in-memory store: exactly-once within one process.
///
/// Built on moka's `future::Cache`: a replay is one lock-free read; claim, complete, renew
/// and release read, check and write a key under a lock shared by 1/256 of the keys, so
/// each is atomic per key. Entries expire with their lease
/// or TTL, and at most `max_capacity` records are kept — past that the least recently used
/// are evicted, so size it above the number of keys live within a TTL. Calls waiting on
/// an in-progress key are woken when it completes, not polled.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<KeyDigest, Arc<Slot>>,
    /// Every write of a key holds the lock of its stripe (picked by a digest byte). A plain
    /// `get` + `insert` under it costs half of moka's own atomic operations
    /// (`entry().or_insert_with` / `and_compute_with`), which lock per key internally.
    stripes: Arc<[Mutex<()>]>,
    tokens: Arc<AtomicU64>,
}

/// One stripe per value of a digest byte (the digest is uniform).
const STRIPES: usize = 1 << u8::BITS;

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
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
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

    /// The lock every write of `key` holds. Moka's own expiry and eviction only remove
    /// entries, which every reader treats as absent anyway.
    fn stripe(&self, key: &KeyDigest) -> &Mutex<()> {
        &self.stripes[usize::from(key.as_bytes()[0])]
    }

    /// [`Store::claim`]; the executor awaits it in place (see [`Store::as_memory`]).
    pub(crate) async fn claim_inline(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let digest = key.digest();
        // A replay, or a call to wait for: one read, no lock.
        if let Some(slot) = self.cache.get(digest).await {
            let now = Instant::now();
            if slot.is_live(now) {
                return Ok(live_claim(&slot, now));
            }
        }
        let _writing = self.stripe(digest).lock().await;
        // Read again under the lock: a racing claimer may have got there first.
        let now = Instant::now();
        let stale = match self.cache.get(digest).await {
            Some(slot) if slot.is_live(now) => return Ok(live_claim(&slot, now)),
            stale => stale,
        };
        let token = self.next_token();
        let slot = Slot::in_progress(token, *fingerprint, now + lease);
        self.cache.insert(*digest, Arc::new(slot)).await;
        // Waiters on an expired claim are woken to claim again.
        if let Some(Slot::InProgress { changed, .. }) = stale.as_deref() {
            changed.send_replace(true);
        }
        Ok(Claim::Claimed(token))
    }

    /// [`Store::complete`], awaited in place by the executor.
    pub(crate) async fn complete_inline(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.fenced(key.digest(), token, |fingerprint, _| {
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

    /// [`Store::release`], awaited in place by the executor.
    pub(crate) async fn release_inline(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        self.fenced(key.digest(), token, |_, _| None).await
    }

    /// Replaces the record `token` owns with `next` (or removes it); waiters are woken
    /// unless it is still in progress.
    async fn fenced(
        &self,
        key: &KeyDigest,
        token: Token,
        next: impl FnOnce(&Fingerprint, &Arc<watch::Sender<bool>>) -> Option<Slot>,
    ) -> Result<(), StoreError> {
        let _writing = self.stripe(key).lock().await;
        let slot = self.cache.get(key).await;
        let Some((fingerprint, changed)) = slot.as_deref().and_then(|s| s.owned_by(token)) else {
            return Err(StoreError::LeaseLost);
        };
        match next(fingerprint, changed) {
            Some(next @ Slot::InProgress { .. }) => {
                self.cache.insert(*key, Arc::new(next)).await;
                return Ok(());
            }
            Some(next) => self.cache.insert(*key, Arc::new(next)).await,
            None => self.cache.invalidate(key).await,
        }
        changed.send_replace(true);
        Ok(())
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
        self.claim_inline(key, fingerprint, lease).await
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        self.fenced(key.digest(), token, |fingerprint, changed| {
            Some(Slot::InProgress {
                token,
                fingerprint: *fingerprint,
                lease_until: Instant::now() + lease,
                changed: changed.clone(),
            })
        })
        .await
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.complete_inline(key, token, output, ttl).await
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        self.release_inline(key, token).await
    }

    fn release_on_drop(&self, key: &Key, token: Token) {
        let store = self.clone();
        let digest = *key.digest();
        let mut release = Box::pin(async move {
            let _ = store.fenced(&digest, token, |_, _| None).await;
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
            let _writing = self.stripe(&key).lock().await;
            // Claimed again since the scan: not ours to remove.
            if let Some(slot) = self.cache.get(&key).await
                && !slot.is_live(Instant::now())
            {
                self.cache.invalidate(&key).await;
                purged += 1;
            }
        }
        self.cache.run_pending_tasks().await;
        Ok(purged)
    }

    fn as_memory(&self) -> Option<&MemoryStore> {
        Some(self)
    }
}
