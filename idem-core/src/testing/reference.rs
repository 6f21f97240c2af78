//! The suite checked against itself: a small reference store passes every check, and
//! each deliberately broken variant of it fails the check meant to catch that bug.

use super::*;
use crate::{KeyDigest, Waiter};
use async_trait::async_trait;
use std::collections::HashMap;
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
    RacyClaim,
    IgnoresNamespace,
    LeaseRemainingTooLong,
    WaiterReadyAtOnce,
    WaiterNeverWakes,
    CompleteNotIdempotent,
    OrphanOnCancel,
    EvictsClaims,
    OverstatesMaxOutput,
}

/// How many records the store keeps with [`Bug::EvictsClaims`].
const EVICTING_CAPACITY: usize = 64;

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
struct Reference {
    bug: Bug,
    next: AtomicU64,
    slots: Mutex<HashMap<KeyDigest, Slot>>,
}

impl Reference {
    fn new(bug: Bug) -> Arc<Self> {
        Arc::new(Reference {
            bug,
            next: AtomicU64::new(1),
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<KeyDigest, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts a slot; with [`Bug::EvictsClaims`], first makes room by evicting any
    /// record, claims included.
    fn insert(&self, slots: &mut HashMap<KeyDigest, Slot>, index: KeyDigest, slot: Slot) {
        if self.bug == Bug::EvictsClaims && slots.len() >= EVICTING_CAPACITY {
            let victim = slots.keys().find(|k| **k != index).copied();
            if let Some(victim) = victim {
                slots.remove(&victim);
            }
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

#[async_trait]
impl Store for Reference {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let index = self.index(key);
        let now = Instant::now();
        let live = |slot: &Slot| match slot {
            Slot::Claimed { .. } if self.bug == Bug::ClaimIgnoresInProgress => false,
            Slot::Claimed { .. } if self.bug == Bug::LeaseNeverExpires => true,
            slot => slot.until() > now,
        };
        if self.bug == Bug::RacyClaim && !self.slots().get(&index).is_some_and(live) {
            // Check, then act: another racer can claim in between.
            tokio::task::yield_now().await;
            let token = self.token(&index);
            let slot = Slot::Claimed {
                token,
                fingerprint: *fingerprint,
                until: now + lease,
            };
            self.slots().insert(index, slot);
            return Ok(Claim::Claimed(token));
        }
        let claim = {
            let mut slots = self.slots();
            match slots.get(&index) {
                Some(slot @ Slot::Done { record, .. }) if live(slot) => {
                    let mut record = record.clone();
                    if self.bug == Bug::ReplayReportsCallerFingerprint {
                        record.fingerprint = *fingerprint;
                    }
                    Ok(Claim::Completed(record))
                }
                Some(
                    slot @ Slot::Claimed {
                        fingerprint: owner,
                        until,
                        ..
                    },
                ) if live(slot) => Ok(Claim::InProgress(Busy {
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
                })),
                _ => {
                    let token = self.token(&index);
                    let slot = Slot::Claimed {
                        token,
                        fingerprint: *fingerprint,
                        until: now + lease,
                    };
                    self.insert(&mut slots, index, slot);
                    Ok(Claim::Claimed(token))
                }
            }
        };
        if self.bug == Bug::OrphanOnCancel && matches!(claim, Ok(Claim::Claimed(_))) {
            // Applied, and the answer is on its way: a cancellation now leaves the
            // claim behind.
            tokio::task::yield_now().await;
        }
        claim
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
        mut output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let index = self.index(key);
        let mut slots = self.slots();
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
            &mut slots,
            index,
            Slot::Done {
                token,
                record,
                until,
            },
        );
        Ok(())
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let index = self.index(key);
        let mut slots = self.slots();
        if !self.owns(slots.get(&index), token, Bug::UnfencedRelease) {
            return Err(StoreError::LeaseLost);
        }
        if self.bug != Bug::ReleaseDoesNothing {
            slots.remove(&index);
        }
        Ok(())
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
    catches_racy_claims: RacyClaim fails concurrent_claims_have_one_winner;
    catches_ignored_namespace: IgnoresNamespace fails keys_and_namespaces_are_independent;
    catches_overlong_lease_remaining: LeaseRemainingTooLong fails lease_remaining_is_bounded;
    catches_waiter_ready_at_once: WaiterReadyAtOnce fails waiter_wakes_on_change;
    catches_waiter_never_waking: WaiterNeverWakes fails waiter_wakes_on_change;
    catches_complete_refusing_its_retry: CompleteNotIdempotent fails completed_record_is_final;
    catches_claims_orphaned_by_cancellation: OrphanOnCancel fails cancelled_claims_leave_nothing_behind;
    catches_evicted_claims: EvictsClaims fails claims_survive_record_pressure;
    catches_overstated_max_output: OverstatesMaxOutput fails largest_output_round_trips;
}
