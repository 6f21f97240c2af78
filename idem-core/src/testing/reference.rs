//! The suite checked against itself: a small reference store passes every check, and
//! each deliberately broken variant of it fails the check meant to catch that bug.

use super::*;
use crate::TxStore;
use crate::store::{KeyDigest, Waiter};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    ClaimIgnoresInProgress,
    BusyReportsCallerFingerprint,
    ReplayReportsCallerFingerprint,
    DropsEmptyOutputs,
    TruncatesLargeOutputs,
    ErrStoredAsOk,
    UnfencedComplete,
    UnfencedRelease,
    UnfencedRenew,
    CompleteOverwritesCompleted,
    ReleaseDoesNothing,
    TokenPerKey,
    LeaseNeverExpires,
    RenewDoesNothing,
    TtlIgnored,
    PurgeCountsNothing,
    PurgeDeletesLive,
    /// Says its records expire by themselves, yet `purge_expired` counts them.
    SelfExpiringPurgeCounts,
    RacyClaim,
    IgnoresNamespace,
    LeaseRemainingTooLong,
    WaiterReadyAtOnce,
    WaiterNeverWakes,
    CompleteNotIdempotent,
    OrphanOnCancel,
    EvictsClaims,
    OverstatesMaxOutput,
    ClaimNowIgnoresRecords,
    // The transactional side.
    TxClaimNotCommitted,
    TxCompleteNotCommitted,
    TxRollbackCommits,
    TxClaimWrongToken,
    TxDoesNotWait,
    PlainClaimIgnoresTx,
}

/// How many records the store keeps with [`Bug::EvictsClaims`].
const EVICTING_CAPACITY: usize = 64;

#[derive(Clone)]
enum Slot {
    Claimed {
        token: Token,
        fingerprint: Fingerprint,
        until: Instant,
    },
    Done {
        token: Token,
        record: Record,
        until: Instant,
    },
}

impl Slot {
    fn until(&self) -> Instant {
        match self {
            Slot::Claimed { until, .. } | Slot::Done { until, .. } => *until,
        }
    }
}

/// A mutex around a map; correct unless given a bug.
///
/// Transactions ([`RefTx`]) work on a copy of the map and write back the keys they changed
/// when committed. They are serialized as SQLite serializes write transactions: one is
/// open at a time (`open_tx`), and a plain claim waits for it.
struct Reference {
    bug: Bug,
    next: AtomicU64,
    slots: Mutex<HashMap<KeyDigest, Slot>>,
    open_tx: Arc<tokio::sync::Mutex<()>>,
}

impl Reference {
    fn new(bug: Bug) -> Arc<Self> {
        Arc::new(Reference {
            bug,
            next: AtomicU64::new(1),
            slots: Mutex::new(HashMap::new()),
            open_tx: Arc::default(),
        })
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<KeyDigest, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts a slot; with [`Bug::EvictsClaims`], a full store first makes room by
    /// evicting every other record, claims included (all of them, so that which one a
    /// check holds does not depend on the map's order).
    fn insert(&self, slots: &mut HashMap<KeyDigest, Slot>, index: KeyDigest, slot: Slot) {
        if self.bug == Bug::EvictsClaims && slots.len() >= EVICTING_CAPACITY {
            slots.retain(|k, _| *k == index);
        }
        slots.insert(index, slot);
    }

    fn index(&self, key: &Key) -> KeyDigest {
        if self.bug == Bug::IgnoresNamespace {
            *new_key_in("any", key.preview()).digest()
        } else {
            *key.digest()
        }
    }

    fn token(&self, index: &KeyDigest) -> Token {
        if self.bug == Bug::TokenPerKey {
            let mut first = [0; 8];
            first.copy_from_slice(&index.as_bytes()[..8]);
            Token::new(u64::from_le_bytes(first))
        } else {
            Token::new(self.next.fetch_add(1, Ordering::Relaxed))
        }
    }

    /// Whether `token` may complete, release or renew the record at `index`.
    fn owns(&self, slot: Option<&Slot>, token: Token, unfenced: Bug) -> bool {
        match slot {
            Some(Slot::Claimed { token: owner, .. }) => *owner == token || self.bug == unfenced,
            Some(Slot::Done { token: owner, .. }) => {
                *owner == token && self.bug == Bug::CompleteOverwritesCompleted
            }
            None => false,
        }
    }
}

fn new_key_in(namespace: &'static str, text: &str) -> Key {
    key_in(namespace, text)
}

impl Reference {
    /// Whether `slot` is live (counts for a claim) at `now`.
    fn live(&self, slot: &Slot, now: Instant) -> bool {
        match slot {
            Slot::Claimed { .. } if self.bug == Bug::ClaimIgnoresInProgress => false,
            Slot::Claimed { .. } if self.bug == Bug::LeaseNeverExpires => true,
            slot => slot.until() > now,
        }
    }

    /// A claim of `index` in `slots` (the store's, or a transaction's copy).
    fn claim_on(
        &self,
        slots: &mut HashMap<KeyDigest, Slot>,
        index: KeyDigest,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Claim {
        let now = Instant::now();
        match slots.get(&index) {
            Some(slot @ Slot::Done { record, .. }) if self.live(slot, now) => {
                let mut record = record.clone();
                if self.bug == Bug::ReplayReportsCallerFingerprint {
                    record.fingerprint = *fingerprint;
                }
                Claim::Completed(record)
            }
            Some(
                slot @ Slot::Claimed {
                    fingerprint: owner,
                    until,
                    ..
                },
            ) if self.live(slot, now) => Claim::InProgress(Busy {
                fingerprint: if self.bug == Bug::BusyReportsCallerFingerprint {
                    *fingerprint
                } else {
                    *owner
                },
                lease_remaining: Some(if self.bug == Bug::LeaseRemainingTooLong {
                    until.saturating_duration_since(now) * 2
                } else {
                    until.saturating_duration_since(now)
                }),
                waiter: match self.bug {
                    Bug::WaiterReadyAtOnce => Some(Waiter::new(async {})),
                    Bug::WaiterNeverWakes => Some(Waiter::new(std::future::pending())),
                    _ => None,
                },
            }),
            _ => {
                let token = self.token(&index);
                let slot = Slot::Claimed {
                    token,
                    fingerprint: *fingerprint,
                    until: now + lease,
                };
                self.insert(slots, index, slot);
                Claim::Claimed(token)
            }
        }
    }

    /// `complete` of `index` in `slots`.
    fn complete_on(
        &self,
        slots: &mut HashMap<KeyDigest, Slot>,
        index: KeyDigest,
        token: Token,
        mut output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if self.bug == Bug::OverstatesMaxOutput && output.bytes.len() > 2 << 20 {
            return Err(StoreError::backend("complete", "packet too large"));
        }
        let fingerprint = match slots.get(&index) {
            // The owner again: a retry after a lost reply.
            Some(Slot::Done { token: owner, .. })
                if *owner == token && self.bug != Bug::CompleteOverwritesCompleted =>
            {
                return if self.bug == Bug::CompleteNotIdempotent {
                    Err(StoreError::LeaseLost)
                } else {
                    Ok(())
                };
            }
            Some(slot) if self.owns(Some(slot), token, Bug::UnfencedComplete) => match slot {
                Slot::Claimed { fingerprint, .. } => *fingerprint,
                Slot::Done { record, .. } => record.fingerprint,
            },
            _ => return Err(StoreError::LeaseLost),
        };
        if self.bug == Bug::DropsEmptyOutputs && output.bytes.is_empty() {
            slots.remove(&index);
            return Ok(());
        }
        if self.bug == Bug::TruncatesLargeOutputs {
            output.bytes.truncate(65_535);
        }
        if self.bug == Bug::ErrStoredAsOk {
            output.outcome = Outcome::Ok;
        }
        let ttl = if self.bug == Bug::TtlIgnored {
            LONG
        } else {
            ttl
        };
        let record = Record {
            fingerprint,
            output,
        };
        let until = Instant::now() + ttl;
        self.insert(
            slots,
            index,
            Slot::Done {
                token,
                record,
                until,
            },
        );
        Ok(())
    }

    /// `release` of `index` in `slots`.
    fn release_on(
        &self,
        slots: &mut HashMap<KeyDigest, Slot>,
        index: KeyDigest,
        token: Token,
    ) -> Result<(), StoreError> {
        if !self.owns(slots.get(&index), token, Bug::UnfencedRelease) {
            return Err(StoreError::LeaseLost);
        }
        if self.bug != Bug::ReleaseDoesNothing {
            slots.remove(&index);
        }
        Ok(())
    }

    /// Writes back what `tx` changed.
    fn commit(&self, mut tx: RefTx) {
        let mut slots = self.slots();
        for index in tx.touched {
            match tx.slots.remove(&index) {
                Some(Slot::Claimed { .. }) if self.bug == Bug::TxClaimNotCommitted => {}
                Some(Slot::Done { .. }) if self.bug == Bug::TxCompleteNotCommitted => {}
                Some(slot) => {
                    slots.insert(index, slot);
                }
                None => {
                    slots.remove(&index);
                }
            }
        }
    }
}

#[async_trait]
impl Store for Reference {
    /// Answers only as a mutant: the reference store awaits every claim.
    fn claim_now(
        &self,
        key: &Key,
        _: &Fingerprint,
        _: Duration,
    ) -> Option<Result<Claim, StoreError>> {
        (self.bug == Bug::ClaimNowIgnoresRecords)
            .then(|| Ok(Claim::Claimed(self.token(&self.index(key)))))
    }

    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let index = self.index(key);
        // Waits for an open transaction, as a writer waits for SQLite's write lock.
        let open_tx = if self.bug == Bug::PlainClaimIgnoresTx {
            None
        } else {
            Some(self.open_tx.lock().await)
        };
        if self.bug == Bug::RacyClaim
            && !self
                .slots()
                .get(&index)
                .is_some_and(|slot| self.live(slot, Instant::now()))
        {
            drop(open_tx);
            // Check, then act: another racer can claim in between.
            tokio::task::yield_now().await;
            let token = self.token(&index);
            let slot = Slot::Claimed {
                token,
                fingerprint: *fingerprint,
                until: Instant::now() + lease,
            };
            self.slots().insert(index, slot);
            return Ok(Claim::Claimed(token));
        }
        let claim = self.claim_on(&mut self.slots(), index, fingerprint, lease);
        drop(open_tx);
        if self.bug == Bug::OrphanOnCancel && matches!(claim, Claim::Claimed(_)) {
            // Applied, and the answer is on its way: a cancellation now leaves the
            // claim behind.
            tokio::task::yield_now().await;
        }
        Ok(claim)
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        let index = self.index(key);
        let mut slots = self.slots();
        if !self.owns(slots.get(&index), token, Bug::UnfencedRenew) {
            return Err(StoreError::LeaseLost);
        }
        if let Some(Slot::Claimed { until, .. }) = slots.get_mut(&index)
            && self.bug != Bug::RenewDoesNothing
        {
            *until = Instant::now() + lease;
        }
        Ok(())
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let index = self.index(key);
        self.complete_on(&mut self.slots(), index, token, output, ttl)
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let index = self.index(key);
        self.release_on(&mut self.slots(), index, token)
    }

    fn expires_records_itself(&self) -> bool {
        self.bug == Bug::SelfExpiringPurgeCounts
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let now = Instant::now();
        let mut slots = self.slots();
        let before = slots.len();
        slots.retain(|_, slot| match slot {
            Slot::Done { .. } if self.bug == Bug::PurgeDeletesLive => false,
            slot => slot.until() > now,
        });
        let purged = (before - slots.len()) as u64;
        Ok(if self.bug == Bug::PurgeCountsNothing {
            0
        } else {
            purged
        })
    }
}

/// A transaction on a [`Reference`]: a copy of its records, and the keys it changed.
struct RefTx {
    /// Held while the transaction is open (none with [`Bug::TxDoesNotWait`]).
    _open: Option<tokio::sync::OwnedMutexGuard<()>>,
    slots: HashMap<KeyDigest, Slot>,
    touched: HashSet<KeyDigest>,
}

#[async_trait]
impl TxStore<RefTx> for Reference {
    async fn claim_in(
        &self,
        tx: &mut RefTx,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
        _wait: Duration,
    ) -> Result<Claim, StoreError> {
        let index = self.index(key);
        let claim = self.claim_on(&mut tx.slots, index, fingerprint, lease);
        Ok(match claim {
            Claim::Claimed(token) => {
                tx.touched.insert(index);
                if self.bug == Bug::TxClaimWrongToken {
                    Claim::Claimed(Token::new(token.get() + 1_000_000))
                } else {
                    Claim::Claimed(token)
                }
            }
            other => other,
        })
    }

    async fn complete_in(
        &self,
        tx: &mut RefTx,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let index = self.index(key);
        self.complete_on(&mut tx.slots, index, token, output, ttl)?;
        tx.touched.insert(index);
        Ok(())
    }

    async fn release_in(&self, tx: &mut RefTx, key: &Key, token: Token) -> Result<(), StoreError> {
        let index = self.index(key);
        self.release_on(&mut tx.slots, index, token)?;
        tx.touched.insert(index);
        Ok(())
    }
}

/// Transactions on one [`Reference`].
struct RefTransactions(Arc<Reference>);

impl TxHarness for RefTransactions {
    type Tx = RefTx;

    async fn begin(&self) -> RefTx {
        let open = if self.0.bug == Bug::TxDoesNotWait {
            None
        } else {
            Some(self.0.open_tx.clone().lock_owned().await)
        };
        RefTx {
            _open: open,
            slots: self.0.slots().clone(),
            touched: HashSet::new(),
        }
    }

    async fn commit(&self, tx: RefTx) {
        self.0.commit(tx);
    }

    async fn rollback(&self, tx: RefTx) {
        if self.0.bug == Bug::TxRollbackCommits {
            self.0.commit(tx);
        }
    }
}

fn with_transactions(bug: Bug) -> (Arc<Reference>, Arc<RefTransactions>) {
    let store = Reference::new(bug);
    (store.clone(), Arc::new(RefTransactions(store)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_store_passes() {
    // As a trait object, too: the checks take any `Arc<S>` with `S: ?Sized`.
    let store: Arc<dyn Store> = Reference::new(Bug::None);
    run_all(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suites_share_one_reference_store() {
    let store = Reference::new(Bug::None);
    tokio::join!(run_all(store.clone()), run_all(store.clone()));
}

// One test per transactional check, through the macro a backend would use.
crate::tx_conformance_tests!(reference_tx, with_transactions(Bug::None));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_store_passes_tx() {
    // As a trait object, too: the checks take any `Arc<S>` with `S: ?Sized`.
    let (store, transactions) = with_transactions(Bug::None);
    let store: Arc<dyn TxStore<RefTx>> = store;
    run_all_tx(store, transactions).await;
}

macro_rules! mutants {
    ($($name:ident: $bug:ident fails $check:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let store = Reference::new(Bug::$bug);
            let run = tokio::spawn(async move { $check(&store).await });
            match run.await {
                Err(e) if e.is_panic() => {}
                _ => panic!(
                    "{} passed a store with the bug {:?}",
                    stringify!($check),
                    Bug::$bug
                ),
            }
        }
    )*};
}

mutants! {
    catches_claim_ignoring_in_progress: ClaimIgnoresInProgress fails claim_fresh_then_in_progress;
    catches_busy_with_callers_fingerprint: BusyReportsCallerFingerprint fails claim_fresh_then_in_progress;
    catches_replay_with_callers_fingerprint: ReplayReportsCallerFingerprint fails complete_then_replay;
    catches_dropped_empty_outputs: DropsEmptyOutputs fails complete_then_replay;
    catches_truncated_outputs: TruncatesLargeOutputs fails complete_then_replay;
    catches_lost_err_outcome: ErrStoredAsOk fails complete_then_replay;
    catches_unfenced_complete: UnfencedComplete fails fencing_rejects_wrong_tokens;
    catches_unfenced_release: UnfencedRelease fails fencing_rejects_wrong_tokens;
    catches_unfenced_renew: UnfencedRenew fails fencing_rejects_wrong_tokens;
    catches_overwritten_completion: CompleteOverwritesCompleted fails completed_record_is_final;
    catches_release_doing_nothing: ReleaseDoesNothing fails release_frees_the_key;
    catches_reused_tokens_after_release: TokenPerKey fails release_frees_the_key;
    catches_reused_tokens_after_expiry: TokenPerKey fails lease_expiry_allows_takeover;
    catches_leases_never_expiring: LeaseNeverExpires fails lease_expiry_allows_takeover;
    catches_renew_doing_nothing: RenewDoesNothing fails renew_keeps_the_claim;
    catches_renewal_leases_never_expiring: LeaseNeverExpires fails renew_keeps_the_claim;
    catches_ignored_ttl: TtlIgnored fails ttl_expiry_frees_the_key;
    catches_purge_counting_nothing: PurgeCountsNothing fails purge_expired_deletes_only_expired;
    catches_purge_deleting_live_records: PurgeDeletesLive fails purge_expired_deletes_only_expired;
    catches_self_expiring_purge_counting: SelfExpiringPurgeCounts fails purge_expired_deletes_only_expired;
    catches_racy_claims: RacyClaim fails concurrent_claims_have_one_winner;
    catches_ignored_namespace: IgnoresNamespace fails keys_and_namespaces_are_independent;
    catches_overlong_lease_remaining: LeaseRemainingTooLong fails lease_remaining_is_bounded;
    catches_waiter_ready_at_once: WaiterReadyAtOnce fails waiter_wakes_on_change;
    catches_waiter_never_waking: WaiterNeverWakes fails waiter_wakes_on_change;
    catches_complete_refusing_its_retry: CompleteNotIdempotent fails completed_record_is_final;
    catches_claims_orphaned_by_cancellation: OrphanOnCancel fails cancelled_claims_leave_nothing_behind;
    catches_evicted_claims: EvictsClaims fails claims_survive_record_pressure;
    catches_claim_now_ignoring_records: ClaimNowIgnoresRecords fails claim_now_agrees_with_claim;
    catches_overstated_max_output: OverstatesMaxOutput fails largest_output_round_trips;
}

macro_rules! tx_mutants {
    ($($name:ident: $bug:ident fails $check:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (store, transactions) = with_transactions(Bug::$bug);
            let run = tokio::spawn(async move { $check(&store, &transactions).await });
            match run.await {
                Err(e) if e.is_panic() => {}
                _ => panic!(
                    "{} passed a store with the bug {:?}",
                    stringify!($check),
                    Bug::$bug
                ),
            }
        }
    )*};
}

tx_mutants! {
    catches_uncommitted_tx_claims: TxClaimNotCommitted fails tx_committed_claim_is_in_progress;
    catches_tx_claims_with_wrong_tokens: TxClaimWrongToken fails tx_committed_claim_is_in_progress;
    catches_tx_claim_ignoring_in_progress: ClaimIgnoresInProgress fails tx_committed_claim_is_in_progress;
    catches_uncommitted_tx_completes: TxCompleteNotCommitted fails tx_committed_complete_replays;
    catches_tx_dropped_empty_outputs: DropsEmptyOutputs fails tx_committed_complete_replays;
    catches_tx_lost_err_outcome: ErrStoredAsOk fails tx_committed_complete_replays;
    catches_rollbacks_that_commit: TxRollbackCommits fails tx_rollback_leaves_nothing;
    catches_plain_claims_ignoring_open_tx: PlainClaimIgnoresTx fails tx_cancelled_plain_claim_leaves_nothing;
    catches_tx_release_doing_nothing: ReleaseDoesNothing fails tx_release_leaves_nothing;
    catches_unfenced_tx_complete: UnfencedComplete fails tx_complete_in_is_fenced;
    catches_unfenced_tx_release: UnfencedRelease fails tx_complete_in_is_fenced;
    catches_tx_complete_refusing_its_retry: CompleteNotIdempotent fails tx_complete_in_is_fenced;
    catches_overwritten_tx_completion: CompleteOverwritesCompleted fails tx_complete_in_is_fenced;
    catches_tx_busy_with_callers_fingerprint: BusyReportsCallerFingerprint fails tx_claim_in_reports_the_stored_fingerprint;
    catches_tx_replay_with_callers_fingerprint: ReplayReportsCallerFingerprint fails tx_claim_in_reports_the_stored_fingerprint;
    catches_tx_duplicates_not_waiting: TxDoesNotWait fails tx_duplicate_waits_for_the_first_transaction;
    catches_tx_leases_never_expiring: LeaseNeverExpires fails tx_claim_in_takes_over_expired_records;
    catches_tx_ignored_ttl: TtlIgnored fails tx_claim_in_takes_over_expired_records;
}
