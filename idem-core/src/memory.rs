//! `MemoryStore`: records in a moka cache, for one process.

use async_trait::async_trait;
use moka::notification::RemovalCause;
use moka::policy::{EvictionPolicy, Expiry};
use moka::sync::Cache;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::store::KeyDigest;
use crate::store::{Busy, Claim, Output, Record, Store, Token, Waiter};
use crate::{Fingerprint, Key, StoreError};

/// How long moka keeps a record past its TTL, so that `purge_expired` sees (and counts)
/// what it removes; every read checks the deadline itself.
const GRACE: Duration = Duration::from_secs(1);

/// The in-memory store: exactly-once within one process.
///
/// Completed records live in a moka cache: a replay is one lock-free read, and at most
/// `max_capacity` records are kept — past that the least recently used are evicted (counted
/// by [`evicted`](MemoryStore::evicted) and the `idem_evictions_total` metric), so size it
/// above the number of keys live within a TTL. In-progress claims live outside the cache, in
/// maps under 256 locks picked by the key digest: capacity pressure never evicts a claim
/// whose body may be running; a claim goes when it completes, is released, or its lease runs
/// out (then it is taken over or purged). Each write of a key holds its lock, so claim,
/// renew, complete and release are atomic per key, and none of them awaits. Calls waiting on
/// a claim are woken when it completes or goes away, not polled.
#[derive(Clone)]
pub struct MemoryStore {
    records: Cache<KeyDigest, Arc<Done>, BuildHasherDefault<DigestHasher>>,
    claims: Arc<[Mutex<Claims>]>,
    tokens: Arc<AtomicU64>,
    evicted: Arc<AtomicU64>,
}

/// One lock per value of a digest byte (the digest is uniform).
const STRIPES: usize = 1 << u8::BITS;

type Claims = HashMap<KeyDigest, Held, BuildHasherDefault<DigestHasher>>;

/// An in-progress claim.
struct Held {
    token: Token,
    fingerprint: Fingerprint,
    lease_until: Instant,
    /// Created by the first call that waits for this claim (most claims have none); set to
    /// `true` when the claim completes or goes away.
    changed: Option<watch::Sender<bool>>,
}

impl Held {
    /// What a concurrent claimer gets: the owner's fingerprint, and a waiter.
    fn busy(&mut self, now: Instant) -> Claim {
        let mut changed = self
            .changed
            .get_or_insert_with(|| watch::Sender::new(false))
            .subscribe();
        Claim::InProgress(Busy {
            fingerprint: self.fingerprint,
            lease_remaining: Some(self.lease_until.saturating_duration_since(now)),
            waiter: Some(Waiter::new(async move {
                // The sender goes with the claim; either way the claim changed.
                let _ = changed.wait_for(|done| *done).await;
            })),
        })
    }

    fn wake(&self) {
        if let Some(changed) = &self.changed {
            changed.send_replace(true);
        }
    }
}

/// A completed record.
struct Done {
    /// The token that completed it: its owner's retry of `complete` is not an error.
    token: Token,
    record: Record,
    expires_at: Instant,
    /// The function that recorded it, for the eviction counter.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    namespace: &'static str,
}

/// Hashes a key digest by taking 8 of its bytes: it is already uniform (SHA-256). Not the
/// first byte, which picks the claim lock, so that keys under one lock spread over buckets.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        match bytes.get(8..16) {
            Some(word) => {
                let mut buf = [0; 8];
                buf.copy_from_slice(word);
                self.0 ^= u64::from_le_bytes(buf);
            }
            // Not a digest (moka or std hashing something else): still a valid hash.
            None => {
                for &b in bytes {
                    self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
    }
}

struct UntilExpiry;

impl Expiry<KeyDigest, Arc<Done>> for UntilExpiry {
    fn expire_after_create(&self, _: &KeyDigest, done: &Arc<Done>, _: Instant) -> Option<Duration> {
        Some(done.expires_at.saturating_duration_since(Instant::now()) + GRACE)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store holding at most 1,000,000 completed records.
    pub fn new() -> Self {
        Self::with_capacity(1_000_000)
    }

    /// A store holding at most `max_capacity` completed records (least recently used
    /// evicted first). In-progress claims do not count and are never evicted.
    pub fn with_capacity(max_capacity: u64) -> Self {
        let evicted = Arc::new(AtomicU64::new(0));
        let records = Cache::builder()
            .max_capacity(max_capacity)
            // LRU admits every new record; TinyLFU could refuse one when full.
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(UntilExpiry)
            .eviction_listener({
                let evicted = evicted.clone();
                move |_, done: Arc<Done>, cause| {
                    if cause == RemovalCause::Size {
                        evicted.fetch_add(1, Ordering::Relaxed);
                        #[cfg(feature = "metrics")]
                        metrics::counter!("idem_evictions_total", "function" => done.namespace)
                            .increment(1);
                        #[cfg(not(feature = "metrics"))]
                        let _ = done;
                    }
                }
            })
            .build_with_hasher(BuildHasherDefault::default());
        MemoryStore {
            records,
            claims: (0..STRIPES).map(|_| Mutex::default()).collect(),
            tokens: Arc::new(AtomicU64::new(1)),
            evicted,
        }
    }

    /// How many records and claims it holds (records as moka counts them: approximate).
    pub fn entry_count(&self) -> u64 {
        let claims: usize = (0..STRIPES).map(|i| self.lock(i).len()).sum();
        self.records.entry_count() + claims as u64
    }

    /// How many completed records were evicted to stay within the capacity. Each is a key
    /// whose next call runs the body again instead of replaying: size the store above the
    /// keys live within a TTL, and watch this stay at 0.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn next_token(&self) -> Token {
        Token::new(self.tokens.fetch_add(1, Ordering::Relaxed))
    }

    fn lock(&self, stripe: usize) -> MutexGuard<'_, Claims> {
        // Nothing panics while holding it; if something did, the maps are still consistent.
        self.claims[stripe]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The claims of `key`'s stripe. Every write of a key holds this lock — completion
    /// moves a claim into `records` under it — so a claimer that holds it and finds no claim
    /// and no record knows the key is free.
    fn claims_of(&self, key: &KeyDigest) -> MutexGuard<'_, Claims> {
        self.lock(usize::from(key.as_bytes()[0]))
    }

    fn live_record(&self, key: &KeyDigest, now: Instant) -> Option<Record> {
        self.records
            .get(key)
            .filter(|done| done.expires_at > now)
            .map(|done| done.record.clone())
    }

    // The operations are synchronous (a read, or a few map operations under a stripe
    // lock); a claim is also answered through `Store::claim_now`, so that a replay skips
    // the boxed future (BENCHMARKS.md, "The renovation").

    /// [`Store::claim`]: never waits.
    fn claim_sync(&self, key: &Key, fingerprint: &Fingerprint, lease: Duration) -> Claim {
        let digest = key.digest();
        // A replay: one read, no lock.
        if let Some(record) = self.live_record(digest, Instant::now()) {
            return Claim::Completed(record);
        }
        let mut claims = self.claims_of(digest);
        let now = Instant::now();
        match claims.entry(*digest) {
            Entry::Occupied(mut held) if held.get().lease_until > now => {
                return held.get_mut().busy(now);
            }
            // Its lease ran out: taken over below, and its waiters claim again.
            Entry::Occupied(expired) => expired.remove().wake(),
            Entry::Vacant(_) => {}
        }
        // Completed between the read above and the lock.
        if let Some(record) = self.live_record(digest, now) {
            return Claim::Completed(record);
        }
        let token = self.next_token();
        let held = Held {
            token,
            fingerprint: *fingerprint,
            lease_until: now + lease,
            changed: None,
        };
        claims.insert(*digest, held);
        Claim::Claimed(token)
    }

    /// [`Store::complete`], without a future.
    fn complete_now(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let digest = key.digest();
        let mut claims = self.claims_of(digest);
        match claims.entry(*digest) {
            Entry::Occupied(held) if held.get().token == token => {
                let held = held.remove();
                let done = Done {
                    token,
                    record: Record {
                        fingerprint: held.fingerprint,
                        output,
                    },
                    expires_at: Instant::now() + ttl,
                    namespace: key.namespace(),
                };
                self.records.insert(*digest, Arc::new(done));
                held.wake();
                Ok(())
            }
            Entry::Occupied(_) => Err(StoreError::LeaseLost),
            // Already completed by this token: a retry after a lost reply.
            Entry::Vacant(_) => match self.records.get(digest) {
                Some(done) if done.token == token => Ok(()),
                _ => Err(StoreError::LeaseLost),
            },
        }
    }

    /// [`Store::release`], without a future.
    fn release_now(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let mut claims = self.claims_of(key.digest());
        match claims.entry(*key.digest()) {
            Entry::Occupied(held) if held.get().token == token => {
                held.remove().wake();
                Ok(())
            }
            _ => Err(StoreError::LeaseLost),
        }
    }

    fn renew_now(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        let mut claims = self.claims_of(key.digest());
        match claims.get_mut(key.digest()) {
            Some(held) if held.token == token => {
                held.lease_until = Instant::now() + lease;
                Ok(())
            }
            _ => Err(StoreError::LeaseLost),
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
        Ok(self.claim_sync(key, fingerprint, lease))
    }

    fn claim_now(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Option<Result<Claim, StoreError>> {
        Some(Ok(self.claim_sync(key, fingerprint, lease)))
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        self.renew_now(key, token, lease)
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.complete_now(key, token, output, ttl)
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        self.release_now(key, token)
    }

    /// Releases at once: nothing here waits.
    fn release_on_drop(&self, key: &Key, token: Token) {
        let _ = self.release_now(key, token);
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let now = Instant::now();
        let mut purged = 0;
        for stripe in 0..STRIPES {
            self.lock(stripe).retain(|_, held| {
                let live = held.lease_until > now;
                if !live {
                    held.wake();
                    purged += 1;
                }
                live
            });
        }
        let expired: Vec<KeyDigest> = self
            .records
            .iter()
            .filter(|(_, done)| done.expires_at <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            let _writing = self.claims_of(&key);
            // Completed again since the scan: not ours to remove.
            if self
                .records
                .get(&key)
                .is_some_and(|done| done.expires_at <= Instant::now())
            {
                self.records.invalidate(&key);
                purged += 1;
            }
        }
        self.records.run_pending_tasks();
        Ok(purged)
    }
}
