//! [`FaultyStore`]: a wrapper around any [`Store`] that injects faults by seeded chance.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::store::{Claim, Output, Token};
use crate::{Fingerprint, Key, Store, StoreError};

/// A store operation, to say which ones a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Store::claim`].
    Claim,
    /// [`Store::renew`] (the heartbeat).
    Renew,
    /// [`Store::complete`].
    Complete,
    /// [`Store::release`], and [`Store::release_on_drop`] (which can only be lost).
    Release,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 4] = [Op::Claim, Op::Renew, Op::Complete, Op::Release];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn name(self) -> &'static str {
        match self {
            Op::Claim => "claim",
            Op::Renew => "renew",
            Op::Complete => "complete",
            Op::Release => "release",
        }
    }
}

/// What goes wrong with an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation waits this long before it reaches the store (a slow network).
    Latency(Duration),
    /// The operation fails before it reaches the store: nothing changed.
    Fail,
    /// The operation applies, then fails as if its reply was lost: the store changed but
    /// the caller saw an error (a claim exists that its caller does not know it holds).
    LoseReply,
    /// The operation applies, then its reply is held this long. Longer than the lease, it
    /// is a caller that stalls past its lease (a pause, a slow link) while another call
    /// may take the record over.
    Stall(Duration),
}

/// How many faults a [`FaultyStore`] injected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// [`Fault::Latency`]s.
    pub latency: u64,
    /// [`Fault::Fail`]s.
    pub failed: u64,
    /// [`Fault::LoseReply`]s.
    pub lost_replies: u64,
    /// [`Fault::Stall`]s.
    pub stalls: u64,
}

/// Wraps a [`Store`] and injects [`Fault`]s into chosen operations, each with a chance,
/// all drawn from one seeded generator: the same seed and the same sequence of operations
/// give the same faults.
///
/// A test of a handler under a store that loses replies:
///
/// ```
/// # extern crate idem_core as idem;
/// use idem::testing::{Fault, FaultyStore, Op};
/// use idem::{Fingerprint, Key, MemoryStore, Options, protocol::Idempotent};
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), idem::Error> {
/// // Every `complete` applies, then its reply is lost (the executor retries it).
/// let store = FaultyStore::new(MemoryStore::new(), 7).inject(Fault::LoseReply, &[Op::Complete], 1.0);
/// let charge = Idempotent::<u32, idem::Error>::new(Options::new("charge"));
/// let runs = AtomicU32::new(0);
/// for _ in 0..3 {
///     let key = Key::new("charge", "order-1")?;
///     let fingerprint = Fingerprint::of(&500_u32)?;
///     let body = async { Ok(runs.fetch_add(1, Ordering::SeqCst) + 1) };
///     assert_eq!(charge.run(&store, key, fingerprint, body).await?, 1);
/// }
/// assert_eq!(runs.load(Ordering::SeqCst), 1);
/// assert!(store.injected().lost_replies >= 1);
/// # Ok(()) }
/// ```
///
/// Rules apply in the order they were added; each one rolls its own chance on every
/// operation it covers. Latencies before an operation add up, and so do stalls after it;
/// a `Fail` that fires wins over a `LoseReply`. The wrapper never answers through
/// [`Store::claim_now`], so every claim passes through the faults. Delays are
/// `tokio::time` sleeps: under a paused clock they cost no real time.
pub struct FaultyStore<S> {
    inner: S,
    rules: Vec<Rule>,
    rng: Mutex<SplitMix64>,
    latency: AtomicU64,
    failed: AtomicU64,
    lost_replies: AtomicU64,
    stalls: AtomicU64,
}

struct Rule {
    ops: u8,
    fault: Fault,
    /// The chance, as a threshold on a uniform `u64`.
    threshold: u64,
}

/// What the rules decided for one operation.
#[derive(Default)]
struct Plan {
    before: Duration,
    fail: bool,
    lose_reply: bool,
    after: Duration,
}

impl<S: Store> FaultyStore<S> {
    /// `inner` without faults yet; `seed` seeds every roll.
    pub fn new(inner: S, seed: u64) -> Self {
        FaultyStore {
            inner,
            rules: Vec::new(),
            rng: Mutex::new(SplitMix64(seed)),
            latency: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            lost_replies: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
        }
    }

    /// Adds a rule: each of `ops` suffers `fault` with `probability` (0.0 never, 1.0 always).
    pub fn inject(mut self, fault: Fault, ops: &[Op], probability: f64) -> Self {
        let probability = probability.clamp(0.0, 1.0);
        let threshold = if probability >= 1.0 {
            u64::MAX
        } else {
            // Exact enough: the chance is a test setting, not a measurement.
            (probability * u64::MAX as f64) as u64
        };
        self.rules.push(Rule {
            ops: ops.iter().fold(0, |bits, op| bits | op.bit()),
            fault,
            threshold,
        });
        self
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> Injected {
        Injected {
            latency: self.latency.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            lost_replies: self.lost_replies.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
        }
    }

    fn plan(&self, op: Op) -> Plan {
        let mut plan = Plan::default();
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for rule in self.rules.iter().filter(|rule| rule.ops & op.bit() != 0) {
            // A rule fires when its roll is at most its threshold; probability 0.0 never.
            if rule.threshold == 0 || rng.next() > rule.threshold {
                continue;
            }
            match rule.fault {
                Fault::Latency(d) => {
                    plan.before += d;
                    self.latency.fetch_add(1, Ordering::Relaxed);
                }
                Fault::Fail if !plan.fail && !plan.lose_reply => {
                    plan.fail = true;
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
                Fault::LoseReply if !plan.fail && !plan.lose_reply => {
                    plan.lose_reply = true;
                    self.lost_replies.fetch_add(1, Ordering::Relaxed);
                }
                Fault::Fail | Fault::LoseReply => {}
                Fault::Stall(d) => {
                    plan.after += d;
                    self.stalls.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        plan
    }

    /// Runs `apply` as `plan` says.
    async fn faulty<T>(
        &self,
        op: Op,
        apply: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let plan = self.plan(op);
        if !plan.before.is_zero() {
            tokio::time::sleep(plan.before).await;
        }
        if plan.fail {
            return Err(StoreError::backend(op.name(), "injected fault: failed"));
        }
        let result = apply.await;
        if !plan.after.is_zero() {
            tokio::time::sleep(plan.after).await;
        }
        if plan.lose_reply {
            return Err(StoreError::backend(
                op.name(),
                "injected fault: the operation applied, its reply was lost",
            ));
        }
        result
    }
}

#[async_trait]
impl<S: Store> Store for FaultyStore<S> {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.faulty(Op::Claim, self.inner.claim(key, fingerprint, lease))
            .await
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        self.faulty(Op::Renew, self.inner.renew(key, token, lease))
            .await
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.faulty(Op::Complete, self.inner.complete(key, token, output, ttl))
            .await
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        self.faulty(Op::Release, self.inner.release(key, token))
            .await
    }

    /// A release from `Drop` cannot wait: a `Fail` drops it (the lease bounds the damage),
    /// every other fault lets it through.
    fn release_on_drop(&self, key: &Key, token: Token) {
        if !self.plan(Op::Release).fail {
            self.inner.release_on_drop(key, token);
        }
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.inner.purge_expired().await
    }

    fn expires_records_itself(&self) -> bool {
        self.inner.expires_records_itself()
    }

    fn max_output_len(&self) -> usize {
        self.inner.max_output_len()
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and every seed (0 too) is good.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(all(test, feature = "moka"))]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use crate::store::Claim;

    fn key(text: &str) -> Key {
        Key::new("idem::testing::faults", text).unwrap()
    }

    const LEASE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_failed_operation_does_not_apply_a_lost_reply_does() {
        let fp = Fingerprint::of(&1).unwrap();
        let failing =
            FaultyStore::new(MemoryStore::new(), 1).inject(Fault::Fail, &[Op::Claim], 1.0);
        assert!(failing.claim(&key("k"), &fp, LEASE).await.is_err());
        // Nothing was claimed: the inner store hands the key out.
        let inner = failing.inner().claim(&key("k"), &fp, LEASE).await;
        assert!(matches!(inner, Ok(Claim::Claimed(_))), "{inner:?}");

        let losing =
            FaultyStore::new(MemoryStore::new(), 1).inject(Fault::LoseReply, &[Op::Claim], 1.0);
        assert!(losing.claim(&key("k"), &fp, LEASE).await.is_err());
        // The claim applied: the inner store says the key is taken.
        let inner = losing.inner().claim(&key("k"), &fp, LEASE).await;
        assert!(matches!(inner, Ok(Claim::InProgress(_))), "{inner:?}");
        assert_eq!(losing.injected().lost_replies, 1);
    }

    #[tokio::test]
    async fn only_the_chosen_operations_suffer() {
        let fp = Fingerprint::of(&1).unwrap();
        let store =
            FaultyStore::new(MemoryStore::new(), 1).inject(Fault::Fail, &[Op::Complete], 1.0);
        let Ok(Claim::Claimed(token)) = store.claim(&key("k"), &fp, LEASE).await else {
            panic!("the claim should pass");
        };
        assert!(store.renew(&key("k"), token, LEASE).await.is_ok());
        assert!(store.release(&key("k"), token).await.is_ok());
        assert_eq!(store.injected(), Injected::default());
    }

    #[tokio::test(start_paused = true)]
    async fn delays_are_on_the_tokio_clock() {
        let fp = Fingerprint::of(&1).unwrap();
        let store = FaultyStore::new(MemoryStore::new(), 1)
            .inject(Fault::Latency(Duration::from_secs(5)), &[Op::Claim], 1.0)
            .inject(Fault::Stall(Duration::from_secs(7)), &[Op::Claim], 1.0);
        let started = tokio::time::Instant::now();
        assert!(store.claim(&key("k"), &fp, LEASE).await.is_ok());
        assert_eq!(started.elapsed(), Duration::from_secs(12));
    }

    /// The same seed gives the same faults; chances are honoured roughly.
    #[tokio::test]
    async fn a_seed_decides_every_fault() {
        let fp = Fingerprint::of(&1).unwrap();
        async fn pattern(seed: u64, fp: &Fingerprint) -> Vec<bool> {
            let store =
                FaultyStore::new(MemoryStore::new(), seed).inject(Fault::Fail, &[Op::Claim], 0.3);
            let mut failed = Vec::new();
            for i in 0..1000 {
                failed.push(store.claim(&key(&i.to_string()), fp, LEASE).await.is_err());
            }
            failed
        }
        let first = pattern(7, &fp).await;
        assert_eq!(first, pattern(7, &fp).await);
        assert_ne!(first, pattern(8, &fp).await);
        let rate = first.iter().filter(|f| **f).count();
        assert!((230..370).contains(&rate), "{rate} of 1000 at 0.3");
        let never = FaultyStore::new(MemoryStore::new(), 7).inject(Fault::Fail, &Op::ALL, 0.0);
        for i in 0..100 {
            assert!(never.claim(&key(&i.to_string()), &fp, LEASE).await.is_ok());
        }
    }
}
