//! The store conformance suite: checks every [`Store`] implementation must pass.
//!
//! In the spirit of `object_store`'s shared integration tests: a backend runs the same
//! checks the in-memory store runs, either all at once with [`run_all`], one test per check
//! with [`store_conformance_tests!`](crate::store_conformance_tests), or check by check by
//! calling the public functions below from its own tests.
//!
//! A store that also works inside its database's transactions ([`TxStore`](crate::TxStore))
//! runs the transactional checks too (the `tx_…` functions), given a [`TxHarness`] that
//! begins, commits and rolls back its transactions: [`run_all_tx`], or one test per check
//! with [`tx_conformance_tests!`](crate::tx_conformance_tests).
//!
//! Every check makes its own keys (namespace `idem::testing::conformance`, key text unique
//! per process, time and call), so checks can share one store — one SQL table — and run in
//! parallel, in one process or in several. The checks use real time (short leases and TTLs
//! of a few hundred milliseconds, and real sleeps), because SQL stores take "now" from the
//! database clock: a store must keep deadlines to at least millisecond precision.
//!
//! The checks need a multi-threaded tokio runtime (the race check spawns its racers).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Barrier;

use crate::store::{Busy, Claim, Outcome, Output, Record, Token};
use crate::{Fingerprint, Key, Store, StoreError};

/// The namespace of every key the suite makes.
pub const NAMESPACE: &str = "idem::testing::conformance";

/// A second namespace, to check that namespaces separate keys.
pub const OTHER_NAMESPACE: &str = "idem::testing::conformance::other";

/// A lease or TTL that cannot run out while a check runs.
const LONG: Duration = Duration::from_secs(600);

/// The lease or TTL of the checks that wait for one to run out.
const SHORT: Duration = Duration::from_millis(300);

/// How long to sleep so that [`SHORT`], started just before, has surely passed.
const PAST_SHORT: Duration = Duration::from_millis(500);

/// How often the renew check renews its [`SHORT`] lease.
const RENEW_EVERY: Duration = Duration::from_millis(100);

mod batches;
mod claims;
mod expiry;
mod faults;
mod fencing;
mod fire;
mod records;
#[cfg(test)]
mod reference;
mod support;
mod tx;
mod waiters;

pub use batches::*;
pub use claims::*;
pub use expiry::*;
pub use faults::{Fault, FaultyStore, Injected, Op};
pub use fencing::*;
pub use fire::Duplicates;
pub use records::*;
use support::*;
pub use tx::*;
pub use waiters::*;

/// Runs every check against `store`, one after another.
///
/// Panics (with the check's name in the message) at the first check that fails. Needs a
/// multi-threaded tokio runtime, e.g. `#[tokio::test(flavor = "multi_thread")]`.
pub async fn run_all<S: Store + ?Sized + 'static>(store: Arc<S>) {
    macro_rules! run_each {
        ($store:ident $($check:ident),* $(,)?) => {
            $($check(&$store).await;)*
        };
    }
    crate::__conformance_checks!((run_each)(store));
}

/// Runs `test` to completion on a new two-worker multi-threaded tokio runtime; what
/// [`store_conformance_tests!`](crate::store_conformance_tests) expands to, so that the
/// crate using it needs no tokio features of its own.
#[doc(hidden)]
pub fn __block_on<F: Future>(test: F) -> F::Output {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(test),
        Err(e) => panic!("could not start a tokio runtime for the conformance suite: {e}"),
    }
}

/// Generates one `#[test]` per conformance check for a store.
///
/// The argument is an expression giving an `Arc` of the store. It is evaluated once per
/// test, inside that test's async body on a fresh two-worker multi-threaded tokio runtime,
/// so it may `.await` (to connect a pool, say) and may refer to anything in scope where
/// the macro is invoked. The tests go in a module, `store_conformance` unless a name is
/// given first (to use the macro twice in one scope):
///
/// ```no_run
/// use std::sync::Arc;
/// use idem_core::MemoryStore;
///
/// idem_core::store_conformance_tests!(Arc::new(MemoryStore::new()));
/// idem_core::store_conformance_tests!(small, Arc::new(MemoryStore::with_capacity(10_000)));
/// # fn main() {}
/// ```
///
/// Invoke it at module level (a test file's top level, say), not inside a function.
///
/// Each check makes its own keys, so the expression may return a store shared by all of
/// the tests (one database table, say) and they may run in parallel. The tests build
/// their runtimes through idem-core's own tokio, so the crate using the macro needs no
/// tokio dependency for them.
#[macro_export]
macro_rules! store_conformance_tests {
    ($module:ident, $make:expr $(,)?) => {
        #[allow(unused_imports)]
        mod $module {
            use super::*;
            $crate::__conformance_checks!(($crate::store_conformance_tests) (@tests ($make)));
        }
    };
    (@tests ($make:expr) $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::testing::__block_on(async {
                    let store = $make;
                    $crate::testing::$check(&store).await;
                });
            }
        )*
    };
    ($make:expr $(,)?) => {
        $crate::store_conformance_tests!(store_conformance, $make);
    };
}

/// Invokes the macro `($callback)` with `$args` followed by the name of every conformance
/// check: the one list that [`run_all`] and every macro generating a test per check use.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_checks {
    (($($callback:tt)+) ($($args:tt)*)) => {
        $($callback)+!($($args)*
            claim_fresh_then_in_progress,
            claim_now_agrees_with_claim,
            complete_then_replay,
            fencing_rejects_wrong_tokens,
            completed_record_is_final,
            release_frees_the_key,
            lease_expiry_allows_takeover,
            renew_keeps_the_claim,
            ttl_expiry_frees_the_key,
            purge_expired_deletes_only_expired,
            concurrent_claims_have_one_winner,
            keys_and_namespaces_are_independent,
            lease_remaining_is_bounded,
            waiter_wakes_on_change,
            cancelled_claims_leave_nothing_behind,
            largest_output_round_trips,
            claims_survive_record_pressure,
            batches_answer_as_single_calls,
        );
    };
}

/// Generates one `#[test]` per transactional check for a [`TxStore`](crate::TxStore).
///
/// The argument is an expression giving a pair: an `Arc` of the store and an `Arc` of its
/// [`TxHarness`](crate::testing::TxHarness). Like
/// [`store_conformance_tests!`](crate::store_conformance_tests), it is evaluated once per
/// test inside that test's async body (so it may `.await`), and the tests go in a module,
/// `tx_conformance` unless a name is given first.
#[macro_export]
macro_rules! tx_conformance_tests {
    ($module:ident, $make:expr $(,)?) => {
        #[allow(unused_imports)]
        mod $module {
            use super::*;
            $crate::__tx_conformance_checks!(($crate::tx_conformance_tests) (@tests ($make)));
        }
    };
    (@tests ($make:expr) $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::testing::__block_on(async {
                    let (store, transactions) = $make;
                    $crate::testing::$check(&store, &transactions).await;
                });
            }
        )*
    };
    ($make:expr $(,)?) => {
        $crate::tx_conformance_tests!(tx_conformance, $make);
    };
}

/// Invokes the macro `($callback)` with `$args` followed by the name of every transactional
/// check: the one list that [`run_all_tx`] and every macro generating a test per check use.
#[doc(hidden)]
#[macro_export]
macro_rules! __tx_conformance_checks {
    (($($callback:tt)+) ($($args:tt)*)) => {
        $($callback)+!($($args)*
            tx_committed_claim_is_in_progress,
            tx_committed_complete_replays,
            tx_rollback_leaves_nothing,
            tx_cancelled_plain_claim_leaves_nothing,
            tx_release_leaves_nothing,
            tx_complete_in_is_fenced,
            tx_claim_in_reports_the_stored_fingerprint,
            tx_duplicate_waits_for_the_first_transaction,
            tx_claim_in_takes_over_expired_records,
        );
    };
}
