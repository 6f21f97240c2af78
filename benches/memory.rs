//! `MemoryStore` through `#[idempotent]` against a hand-written minimal protocol on a raw
//! moka cache, in the same run. The figure that matters is the ratio (BENCHMARKS.md).
//!
//! Both sides do the same work per call: a SHA-256 digest of `(namespace, scope, key)`, a
//! 256-bit fingerprint of the request, the moka operations, bincode 2 for the output.
//!
//! - fresh key, baseline: `entry(k).or_insert_with(in-progress)` (atomic insert-if-absent) +
//!   `insert(k, completed)`; `baseline_get_first` also does the `get` a single function
//!   that serves replays too would do first, and `baseline_striped` is `MemoryStore`'s own
//!   protocol by hand (a `get`, then `get` + `insert` under the key's stripe lock, and the
//!   fenced completion as `get` + `insert` under it) — both for information.
//! - replay, baseline: `get` + 32-byte fingerprint compare + bincode decode.
//! - 16 tasks on a 2-worker runtime, fresh distinct keys: throughput of both, timed in CPU
//!   time of the whole process (both workers), so the figure is CPU time per call and
//!   throughput is its inverse (times 2 cores).
//! - parts: each step on its own (key digest, fingerprint, each moka operation), to tell
//!   where the time goes.
//!
//! Times are CPU time (`benches/support`), not wall-clock: the machine's 2 cores are shared.
//! `IDEM_BENCH_WALL=1` times wall-clock instead.
//!
//! The baseline cache is configured as `MemoryStore`'s (1M capacity, LRU, per-entry expiry
//! at the record's deadline), so the ratio is idem's own cost, not moka's configuration.
//! Each sample gets a new store, so the fresh path does not grow one cache without bound.

mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use idem::{MemoryStore, idempotent};
use moka::future::Cache;
use moka::ops::compute::Op;
use moka::policy::{EvictionPolicy, Expiry};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::clock::{self, Clock};
use support::measure::{self, Mode, Protocol, Timing};
use support::payload::{REPLAYED, Receipt, Transfer, fresh_requests, request, settle};

#[idempotent(key = req.request_id, scope = req.user_id, store = store)]
async fn transfer(store: &MemoryStore, req: Transfer) -> Result<Receipt, idem::Error> {
    Ok(settle(&req))
}

// ---------------------------------------------------------------------------------------
// The hand-written baseline.

const TTL: Duration = Duration::from_secs(24 * 60 * 60);
const LEASE: Duration = Duration::from_secs(30);
const NAMESPACE: &[u8] = b"memory::transfer";

enum Slot {
    InProgress {
        token: u64,
        fingerprint: [u8; 32],
        lease_until: Instant,
    },
    Completed {
        fingerprint: [u8; 32],
        output: Vec<u8>,
        expires_at: Instant,
    },
}

impl Slot {
    fn deadline(&self) -> Instant {
        match self {
            Slot::InProgress { lease_until, .. } => *lease_until,
            Slot::Completed { expires_at, .. } => *expires_at,
        }
    }
}

/// The same per-entry expiry `MemoryStore` uses.
struct UntilDeadline;

impl Expiry<[u8; 32], Arc<Slot>> for UntilDeadline {
    fn expire_after_create(&self, _: &[u8; 32], slot: &Arc<Slot>, _: Instant) -> Option<Duration> {
        Some(slot.deadline().saturating_duration_since(Instant::now()) + Duration::from_secs(1))
    }

    fn expire_after_update(
        &self,
        _: &[u8; 32],
        slot: &Arc<Slot>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.deadline().saturating_duration_since(Instant::now()) + Duration::from_secs(1))
    }
}

#[derive(Clone)]
struct Baseline {
    cache: Cache<[u8; 32], Arc<Slot>>,
    tokens: Arc<AtomicU64>,
    /// For `fresh_striped`: writers of a key hold the lock its first byte picks.
    stripes: Arc<[tokio::sync::Mutex<()>]>,
}

/// The hand-written protocols for a fresh key.
#[derive(Clone, Copy)]
enum Fresh {
    /// The baseline: insert-if-absent, then `insert`.
    InsertIfAbsent,
    /// A `get` first, as one function serving replays too would.
    GetFirst,
    /// `MemoryStore`'s protocol by hand.
    Striped,
}

#[derive(Debug)]
enum BaselineError {
    InProgress,
    Mismatch,
    Codec,
    LeaseLost,
}

impl Baseline {
    fn new() -> Self {
        Baseline {
            cache: Cache::builder()
                .max_capacity(1_000_000)
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(UntilDeadline)
                .build(),
            tokens: Arc::new(AtomicU64::new(1)),
            stripes: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    fn key(req: &Transfer) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(NAMESPACE);
        h.update(req.user_id.to_le_bytes());
        h.update((req.request_id.len() as u64).to_le_bytes());
        h.update(req.request_id.as_bytes());
        h.finalize().into()
    }

    fn fingerprint(req: &Transfer) -> [u8; 32] {
        let bytes = bincode::serde::encode_to_vec(req, bincode::config::standard()).unwrap();
        Sha256::digest(&bytes).into()
    }

    /// Fresh key: insert-if-absent, run, update.
    async fn fresh(&self, req: Transfer) -> Result<Receipt, BaselineError> {
        let key = Self::key(&req);
        let fingerprint = Self::fingerprint(&req);
        self.claim_and_run(key, fingerprint, req).await
    }

    /// What one hand-written function serving both paths does: `get` first.
    async fn get_first(&self, req: Transfer) -> Result<Receipt, BaselineError> {
        let key = Self::key(&req);
        let fingerprint = Self::fingerprint(&req);
        if let Some(slot) = self.cache.get(&key).await {
            return Self::replay_slot(&slot, &fingerprint);
        }
        self.claim_and_run(key, fingerprint, req).await
    }

    async fn claim_and_run(
        &self,
        key: [u8; 32],
        fingerprint: [u8; 32],
        req: Transfer,
    ) -> Result<Receipt, BaselineError> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let entry = self
            .cache
            .entry(key)
            .or_insert_with(async {
                Arc::new(Slot::InProgress {
                    token,
                    fingerprint,
                    lease_until: Instant::now() + LEASE,
                })
            })
            .await;
        if !entry.is_fresh() {
            return Self::replay_slot(&entry.into_value(), &fingerprint);
        }
        let receipt = settle(&req);
        let output = bincode::serde::encode_to_vec(&receipt, bincode::config::standard())
            .map_err(|_| BaselineError::Codec)?;
        self.cache
            .insert(
                key,
                Arc::new(Slot::Completed {
                    fingerprint,
                    output,
                    expires_at: Instant::now() + TTL,
                }),
            )
            .await;
        Ok(receipt)
    }

    /// `MemoryStore`'s protocol by hand: a lock-free `get`; on a miss, `get` + `insert` under
    /// the key's stripe lock; after the body, the fenced completion under it.
    async fn fresh_striped(&self, req: Transfer) -> Result<Receipt, BaselineError> {
        let key = Self::key(&req);
        let fingerprint = Self::fingerprint(&req);
        if let Some(slot) = self.cache.get(&key).await {
            return Self::replay_slot(&slot, &fingerprint);
        }
        let stripe = &self.stripes[usize::from(key[0])];
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        {
            let _writing = stripe.lock().await;
            if let Some(slot) = self.cache.get(&key).await {
                return Self::replay_slot(&slot, &fingerprint);
            }
            let slot = Slot::InProgress {
                token,
                fingerprint,
                lease_until: Instant::now() + LEASE,
            };
            self.cache.insert(key, Arc::new(slot)).await;
        }
        let receipt = settle(&req);
        let output = bincode::serde::encode_to_vec(&receipt, bincode::config::standard())
            .map_err(|_| BaselineError::Codec)?;
        let _writing = stripe.lock().await;
        match self.cache.get(&key).await.as_deref() {
            Some(Slot::InProgress { token: owner, .. }) if *owner == token => {}
            _ => return Err(BaselineError::LeaseLost),
        }
        let slot = Slot::Completed {
            fingerprint,
            output,
            expires_at: Instant::now() + TTL,
        };
        self.cache.insert(key, Arc::new(slot)).await;
        Ok(receipt)
    }

    /// A fresh key by one of the hand-written protocols.
    async fn fresh_by(&self, protocol: Fresh, req: Transfer) -> Result<Receipt, BaselineError> {
        match protocol {
            Fresh::InsertIfAbsent => self.fresh(req).await,
            Fresh::GetFirst => self.get_first(req).await,
            Fresh::Striped => self.fresh_striped(req).await,
        }
    }

    /// Replay: `get`, compare the fingerprint, decode.
    async fn replay(&self, req: Transfer) -> Result<Receipt, BaselineError> {
        let key = Self::key(&req);
        let fingerprint = Self::fingerprint(&req);
        match self.cache.get(&key).await {
            Some(slot) => Self::replay_slot(&slot, &fingerprint),
            None => unreachable!("the replay bench pre-records its key"),
        }
    }

    fn replay_slot(slot: &Slot, fingerprint: &[u8; 32]) -> Result<Receipt, BaselineError> {
        match slot {
            Slot::Completed {
                fingerprint: recorded,
                output,
                ..
            } => {
                if recorded != fingerprint {
                    return Err(BaselineError::Mismatch);
                }
                let (receipt, _) =
                    bincode::serde::decode_from_slice(output, bincode::config::standard())
                        .map_err(|_| BaselineError::Codec)?;
                Ok(receipt)
            }
            Slot::InProgress {
                fingerprint: owner, ..
            } if owner != fingerprint => Err(BaselineError::Mismatch),
            Slot::InProgress { .. } => Err(BaselineError::InProgress),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The peer: the `idempotent` 0.3 crate's in-memory store, doing the same work per call: a
// key of scope and key, a fingerprint of the request's bincode (its xxh3 strategy), a
// claim, the body, bincode for the output, a fenced completion; a replay is the claim that
// finds the completed entry, its fingerprint check and the decode.

mod peer {
    use super::{Receipt, TTL, Transfer, settle};
    use idempotent::entry::ExistingEntry;
    use idempotent::fingerprint::{DefaultFingerprintStrategy, Fingerprint, FingerprintStrategy};
    use idempotent::store::memory::MemoryStore;
    use idempotent::store::{IdempotencyStore, InsertResult};
    use idempotent::{CachedResponse, IdempotencyEntry, IdempotencyKey, Metadata};
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Clone)]
    pub(crate) struct Peer(Arc<MemoryStore>);

    impl Peer {
        /// Spawns the store's task: call inside the runtime.
        pub(crate) fn new() -> Self {
            Peer(Arc::new(MemoryStore::new(1024, Duration::from_secs(60))))
        }

        fn key_and_fingerprint(req: &Transfer) -> (IdempotencyKey, Fingerprint) {
            let key = IdempotencyKey::new(format!("{}/{}", req.user_id, req.request_id)).unwrap();
            let body = bincode::serde::encode_to_vec(req, bincode::config::standard()).unwrap();
            (key, DefaultFingerprintStrategy.compute("transfer", &body))
        }

        pub(crate) async fn call(&self, req: Transfer) -> Receipt {
            let (key, fingerprint) = Self::key_and_fingerprint(&req);
            let entry = IdempotencyEntry::new(fingerprint, TTL);
            match self.0.try_insert(&key, entry).await.unwrap() {
                InsertResult::Claimed { fencing_token } => {
                    let receipt = settle(&req);
                    let body = bincode::serde::encode_to_vec(&receipt, bincode::config::standard())
                        .unwrap();
                    let response = CachedResponse {
                        status_code: 200,
                        metadata: Metadata::default(),
                        body: body.into(),
                    };
                    let done = IdempotencyEntry::new(fingerprint, TTL).complete(response);
                    self.0.complete(&key, done, fencing_token).await.unwrap();
                    receipt
                }
                InsertResult::Exists(ExistingEntry::Completed(done)) => {
                    assert!(done.fingerprint_matches(fingerprint), "payload mismatch");
                    let (receipt, _) = bincode::serde::decode_from_slice(
                        &done.response().body,
                        bincode::config::standard(),
                    )
                    .unwrap();
                    receipt
                }
                InsertResult::Exists(ExistingEntry::Processing(_)) => panic!("in progress"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The sides as the harness calls them (`benches/support/measure.rs`).

/// idem: the macro on a `MemoryStore`.
#[derive(Clone)]
struct Idem(MemoryStore);

impl Protocol for Idem {
    async fn fresh(&self, req: Transfer) -> Receipt {
        transfer(&self.0, req).await.unwrap()
    }
    async fn replay(&self, req: Transfer) -> Receipt {
        transfer(&self.0, req).await.unwrap()
    }
}

/// The baseline, a fresh key by one of the hand-written protocols.
#[derive(Clone)]
struct ByHand(Baseline, Fresh);

impl Protocol for ByHand {
    async fn fresh(&self, req: Transfer) -> Receipt {
        self.0.fresh_by(self.1, req).await.unwrap()
    }
    async fn replay(&self, req: Transfer) -> Receipt {
        self.0.replay(req).await.unwrap()
    }
}

impl Protocol for peer::Peer {
    async fn fresh(&self, req: Transfer) -> Receipt {
        self.call(req).await
    }
    async fn replay(&self, req: Transfer) -> Receipt {
        self.call(req).await
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A new store per sample, so the fresh path does not grow one cache without bound.
fn bench_fresh(c: &mut Criterion) {
    support::payload::sizes("memory");
    let rt = current_thread();
    let mut group = c.benchmark_group("memory/fresh");
    group.throughput(Throughput::Elements(1));
    let how = (Mode::Fresh, Timing::Cpu);
    measure::bench(&mut group, "idem", &rt, how, || Idem(MemoryStore::new()));
    measure::bench(&mut group, "peer_idempotent", &rt, how, peer::Peer::new);
    for (name, protocol) in [
        ("baseline", Fresh::InsertIfAbsent),
        ("baseline_get_first", Fresh::GetFirst),
        ("baseline_striped", Fresh::Striped),
    ] {
        measure::bench(&mut group, name, &rt, how, || {
            ByHand(Baseline::new(), protocol)
        });
    }
    group.finish();
}

fn bench_replay(c: &mut Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("memory/replay");
    group.throughput(Throughput::Elements(1));

    let idem = Idem(MemoryStore::new());
    let base = ByHand(Baseline::new(), Fresh::InsertIfAbsent);
    let (recorded, peer) = rt.block_on(async {
        let a = idem.fresh(request(REPLAYED)).await;
        let b = base.fresh(request(REPLAYED)).await;
        let peer = peer::Peer::new();
        let c = peer.fresh(request(REPLAYED)).await;
        assert_eq!(a, b);
        assert_eq!(a, c);
        (a, peer)
    });

    let how = (Mode::Replay, Timing::Cpu);
    measure::bench(&mut group, "idem", &rt, how, || idem.clone());
    measure::bench(&mut group, "baseline", &rt, how, || base.clone());
    measure::bench(&mut group, "peer_idempotent", &rt, how, || peer.clone());
    group.finish();

    // The record outlived the run and still replays the same result.
    rt.block_on(async {
        assert_eq!(idem.replay(request(REPLAYED)).await, recorded);
    });
}

/// Where the time goes, for the diagnosis in BENCHMARKS.md: each step of a call on its own.
fn bench_parts(c: &mut Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("memory/parts");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let req = request(7);

    group.bench_function("key/idem", |b| {
        b.iter_custom(|iters| {
            clock::time(iters, || {
                idem::Key::scoped(
                    "memory::transfer",
                    &black_box(&req).user_id,
                    &req.request_id,
                )
                .unwrap()
            })
        })
    });
    group.bench_function("key/sha256", |b| {
        b.iter_custom(|iters| clock::time(iters, || Baseline::key(black_box(&req))))
    });
    group.bench_function("fingerprint/idem", |b| {
        b.iter_custom(|iters| {
            clock::time(iters, || idem::Fingerprint::of(black_box(&req)).unwrap())
        })
    });
    group.bench_function("fingerprint/bincode+sha256", |b| {
        b.iter_custom(|iters| clock::time(iters, || Baseline::fingerprint(black_box(&req))))
    });

    let slot = || {
        Arc::new(Slot::InProgress {
            token: 1,
            fingerprint: [7; 32],
            lease_until: Instant::now() + LEASE,
        })
    };
    // `iters` distinct keys, recorded in a new cache first when `preload`.
    let keys = |iters: u64, preload: bool| {
        let cache = Baseline::new().cache;
        let keys: Vec<[u8; 32]> = fresh_requests(iters).iter().map(Baseline::key).collect();
        if preload {
            rt.block_on(async {
                for k in &keys {
                    cache.insert(*k, slot()).await;
                }
            });
        }
        (cache, keys)
    };
    group.bench_function("moka/get_miss", |b| {
        b.iter_custom(|iters| {
            let (cache, keys) = keys(iters, false);
            rt.block_on(async {
                let start = Clock::thread();
                for k in &keys {
                    black_box(cache.get(k).await);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("moka/get_hit", |b| {
        b.iter_custom(|iters| {
            let (cache, keys) = keys(iters, true);
            rt.block_on(async {
                let start = Clock::thread();
                for k in &keys {
                    black_box(cache.get(k).await);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("moka/or_insert_with_new", |b| {
        b.iter_custom(|iters| {
            let (cache, keys) = keys(iters, false);
            rt.block_on(async {
                let start = Clock::thread();
                for k in keys {
                    black_box(
                        cache
                            .entry(k)
                            .or_insert_with(async { slot() })
                            .await
                            .is_fresh(),
                    );
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("moka/insert_new", |b| {
        b.iter_custom(|iters| {
            let (cache, keys) = keys(iters, false);
            rt.block_on(async {
                let start = Clock::thread();
                for k in keys {
                    cache.insert(k, slot()).await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("moka/insert_existing", |b| {
        b.iter_custom(|iters| {
            let (cache, keys) = keys(iters, true);
            rt.block_on(async {
                let start = Clock::thread();
                for k in keys {
                    cache.insert(k, slot()).await;
                }
                start.elapsed()
            })
        })
    });
    for (name, preload) in [
        ("moka/and_compute_with_new", false),
        ("moka/and_compute_with_existing", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (cache, keys) = keys(iters, preload);
                rt.block_on(async {
                    let start = Clock::thread();
                    for k in keys {
                        black_box(
                            cache
                                .entry(k)
                                .and_compute_with(|_| std::future::ready(Op::Put(slot())))
                                .await,
                        );
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// CPU time of the process is what both workers spent; per call, it is 2 / throughput.
fn bench_concurrent(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("memory/fresh_16_tasks");
    group.throughput(Throughput::Elements(1));
    group.sample_size(50);
    let how = (Mode::Tasks, Timing::Cpu);
    measure::bench(&mut group, "idem", &rt, how, || Idem(MemoryStore::new()));
    measure::bench(&mut group, "peer_idempotent", &rt, how, peer::Peer::new);
    measure::bench(&mut group, "baseline", &rt, how, || {
        ByHand(Baseline::new(), Fresh::InsertIfAbsent)
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_fresh,
    bench_replay,
    bench_concurrent,
    bench_parts
);
criterion_main!(benches);
