//! Deterministic simulation of the protocol: seeded schedules in which callers race, retry,
//! are cancelled at any await point and panic, against a store that delays, fails, loses
//! replies and stalls past the lease — with the contract's invariants checked on every
//! history.
//!
//! One `u64` seed draws a whole schedule (records and their options, callers and their
//! attempts, the faults) and, on a single-threaded tokio runtime with a paused clock,
//! replays it bit for bit. The store stack of a schedule, top to bottom:
//!
//! - `Tap`: one per caller, notes what its claims answered and which of its claims a fault
//!   touched;
//! - `idem::testing::FaultyStore`: the public fault wrapper, seeded from the schedule;
//! - `Ledger`: keeps leases on the simulation's clock and checks every answer of the store
//!   against a model of the contract;
//! - the store under test: `MemoryStore` (every run), SQLite (real I/O, fewer schedules).
//!
//! Bodies record their own executions; the invariants (each counted in the output):
//! a body runs only on a fresh claim of its own (so a mismatch or a conflict never runs
//! it); a second run of a key has a reason the contract names — the first's error or panic
//! released it, it was cancelled, or its lease expired because a fault held its heartbeat
//! or its record could not be written — classified and counted; a replay returns exactly
//! the recorded output of a completed execution of the same key, scope and payload; a
//! stale token never completes, releases or renews; every call ends within its bound
//! (its wait, its body, a lease for its record, and the plan's fault delays), and a
//! schedule whose clock stops (a busy loop) is caught by a watchdog on real time; no claim
//! is left behind without a fault to explain it.
//!
//! Running it:
//!
//! - `cargo test --features testing --test simulation` — the CI run: the seeds in
//!   `tests/simulation_seeds.txt` first, then 100,000 new schedules (from a base seed
//!   printed in the output).
//! - `IDEM_SIM_SEED=<seed> cargo test --features testing --test simulation memory -- --nocapture`
//!   — replays one schedule and prints its plan and history (what a failure prints).
//! - `IDEM_SIM_SCHEDULES=<n>` runs n schedules instead (the soak:
//!   `IDEM_SIM_SCHEDULES=10000000`), `IDEM_SIM_BASE=<seed>` fixes the base seed.
//!
//! Mutation check — the protocol broken on purpose, and the invariant that caught it, with
//! the first failing seed of a run from `IDEM_SIM_BASE=0` (so within the first few hundred
//! schedules of the 100,000 a CI run explores). The two store wrappers of
//! `simulation/mutants.rs` run in every CI run (`mutants_are_caught`); the others are
//! patches applied by hand to the source, run, and reverted (2026-11-30):
//!
//! | mutant | caught by | seed |
//! |---|---|---|
//! | store wrapper: `complete`/`release` of a stale token act on the newer owner (no fencing) | a stale token never completes | 173 |
//! | store wrapper: `renew` extends whoever holds the key (renew without the token) | only the owner renews | 582 |
//! | `MemoryStore::complete_now` without its token check | a stale token never completes | 528 |
//! | `MemoryStore::renew_now` without its token check | only the owner renews | 582 |
//! | `settle` skips the fingerprint check on the replay path | a replay is the recorded output of the same key, scope and payload | 3 |
//! | `settle` skips the fingerprint check on the in-progress path | in progress only for the same payload | 9 |
//! | no heartbeat (`with_heartbeat` awaits the body alone) | a second run has a reason the contract names | 5 |
//! | a dropped call does not release (`ReleaseOnDrop` does nothing) | no claim left behind without a fault to explain it | 8 |
//! | a panicking body's claim is not released | no claim left behind without a fault to explain it | 22 |
//! | `settle` never ends a wait at its `wait_timeout` (the waiter then spins: no timer, the paused clock stops) | the watchdog: still running after 60 s of real time | 5 |
// The modules below are the test's own: `pub` there means "for the other modules".
#![allow(unreachable_pub)]

mod support;

#[path = "simulation/history.rs"]
mod history;
#[path = "simulation/ledger.rs"]
mod ledger;
#[path = "simulation/mutants.rs"]
mod mutants;
#[path = "simulation/rng.rs"]
mod rng;
#[path = "simulation/tap.rs"]
mod tap;
#[path = "simulation/world.rs"]
mod world;

use history::{History, Tally};
use idem::{MemoryStore, Store};
use mutants::{Broken, Mutant};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};
use world::Plan;

/// The seeds that once failed, replayed before anything else.
const REGRESSIONS: &str = include_str!("simulation_seeds.txt");

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a u64: {e}"))
    })
}

/// Panicking bodies are part of the simulation: keep their messages off the terminal.
fn quiet_simulated_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let simulated = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m == world::PANIC);
            if !simulated {
                default(info);
            }
        }));
    });
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Runs one schedule on `runtime` against `store`.
fn schedule<S: Store>(runtime: &tokio::runtime::Runtime, seed: u64, store: S) -> History {
    let plan = Plan::draw(seed);
    runtime.block_on(world::run(&plan, store, Duration::ZERO))
}

/// What a run of many schedules found.
struct Found {
    schedules: u64,
    tally: Tally,
    /// Seeds that broke an invariant, with what broke.
    failures: Vec<(u64, Vec<String>)>,
    elapsed: Duration,
}

/// Runs the schedules `base + i` for `i < count` over `threads` threads, each with its
/// own runtime and store (from `store`), stopping a thread at its first failure when
/// `stop_at_first`.
fn explore<S: Store>(
    base: u64,
    count: u64,
    threads: u64,
    stop_at_first: bool,
    store: impl Fn() -> S + Sync,
) -> Found {
    let started = Instant::now();
    let watchdog = Watchdog::new(threads as usize);
    let results: Vec<Found> = std::thread::scope(|scope| {
        scope.spawn(|| watchdog.watch());
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (store, watchdog) = (&store, &watchdog);
                scope.spawn(move || {
                    let runtime = paused_runtime();
                    let mut found = Found {
                        schedules: 0,
                        tally: Tally::default(),
                        failures: Vec::new(),
                        elapsed: Duration::ZERO,
                    };
                    let mut i = t;
                    while i < count {
                        let seed = base.wrapping_add(i);
                        watchdog.running(t as usize, Some(seed));
                        let history = schedule(&runtime, seed, store());
                        found.schedules += 1;
                        found.tally.merge(&history.tally);
                        if !history.violations.is_empty() {
                            found.failures.push((seed, history.violations));
                            if stop_at_first {
                                break;
                            }
                        }
                        i += threads;
                    }
                    watchdog.running(t as usize, None);
                    found
                })
            })
            .collect();
        let results = workers.into_iter().map(|w| w.join().unwrap()).collect();
        watchdog.stop();
        results
    });
    let mut all = Found {
        schedules: 0,
        tally: Tally::default(),
        failures: Vec::new(),
        elapsed: started.elapsed(),
    };
    for found in results {
        all.schedules += found.schedules;
        all.tally.merge(&found.tally);
        all.failures.extend(found.failures);
    }
    all.failures
        .sort_by_key(|(seed, _)| seed.wrapping_sub(base));
    all
}

/// Ends the process when a schedule runs longer than [`Watchdog::HANG`] of real time. A
/// call that spins without awaiting a timer (a busy retry loop) never lets the paused clock
/// advance, so no bound on the simulation's clock can fire; only real time can tell.
struct Watchdog {
    /// Per worker: the seed it runs and since when.
    running: Mutex<Vec<Option<(u64, Instant)>>>,
    stopped: AtomicBool,
}

impl Watchdog {
    /// Schedules take milliseconds; this is a hang even on a loaded machine.
    const HANG: Duration = Duration::from_secs(60);

    fn new(workers: usize) -> Self {
        Watchdog {
            running: Mutex::new(vec![None; workers]),
            stopped: AtomicBool::new(false),
        }
    }

    fn running(&self, worker: usize, seed: Option<u64>) {
        self.running.lock().unwrap()[worker] = seed.map(|seed| (seed, Instant::now()));
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn watch(&self) {
        while !self.stopped.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let hung = self
                .running
                .lock()
                .unwrap()
                .iter()
                .flatten()
                .find(|(_, since)| since.elapsed() > Self::HANG)
                .copied();
            if let Some((seed, _)) = hung {
                to_terminal(&format!(
                    "schedule {seed} hangs: still running after {:?} of real time, its clock \
                     stopped (a loop that never awaits a timer)\nreplay it: {}\n",
                    Self::HANG,
                    replay_command(seed)
                ));
                std::process::exit(101);
            }
        }
    }
}

fn report(title: &str, found: &Found) {
    let rate = found.schedules as f64 / found.elapsed.as_secs_f64();
    let mut text = format!(
        "{title}: {} schedules in {:.1} s ({rate:.0} schedules/s)\n",
        found.schedules,
        found.elapsed.as_secs_f64()
    );
    for (name, n) in &found.tally.0 {
        text.push_str(&format!("  {n:>10}  {name}\n"));
    }
    to_terminal(&text);
}

/// Straight to the terminal: libtest captures `eprint!` of passing tests, and CI's log
/// should show the figures.
fn to_terminal(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

fn replay_command(seed: u64) -> String {
    format!(
        "IDEM_SIM_SEED={seed} cargo test --features testing --test simulation memory -- --nocapture"
    )
}

fn fail_on(found: &Found) {
    if let Some((seed, violations)) = found.failures.first() {
        panic!(
            "schedule {seed} broke the protocol ({} failing schedules in all):\n  {}\nreplay it: {}\n\
             and add the seed to tests/simulation_seeds.txt once fixed",
            found.failures.len(),
            violations.join("\n  "),
            replay_command(*seed)
        );
    }
}

fn regression_seeds() -> Vec<u64> {
    REGRESSIONS
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(|line| line.parse().expect("a seed in tests/simulation_seeds.txt"))
        .collect()
}

#[test]
fn memory_store_under_faults() {
    quiet_simulated_panics();
    let store = MemoryStore::new();
    if let Some(seed) = env_u64("IDEM_SIM_SEED") {
        eprintln!("plan of schedule {seed}: {:#?}", Plan::draw(seed));
        let history = schedule(&paused_runtime(), seed, &store);
        eprintln!("{history:#?}");
        assert!(history.violations.is_empty(), "{:#?}", history.violations);
        return;
    }
    for seed in regression_seeds() {
        let found = explore(seed, 1, 1, true, || &store);
        if let Some((seed, violations)) = found.failures.first() {
            panic!(
                "regression seed {seed} fails again:\n  {}\nreplay it: {}",
                violations.join("\n  "),
                replay_command(*seed)
            );
        }
    }
    let count = env_u64("IDEM_SIM_SCHEDULES").unwrap_or(100_000);
    let base = env_u64("IDEM_SIM_BASE").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let found = explore(base, count, threads, true, || &store);
    report(
        &format!("simulation, memory store under faults (base seed {base}, {threads} threads)"),
        &found,
    );
    fail_on(&found);
    assert_eq!(found.schedules, count);
}

#[test]
fn a_seed_replays_bit_for_bit() {
    quiet_simulated_panics();
    let store = MemoryStore::new();
    for seed in (0..50).chain([0xdead_beef]) {
        let first = schedule(&paused_runtime(), seed, &store).summary();
        let runtime = paused_runtime();
        // Another schedule first: a runtime reused across schedules changes nothing.
        schedule(&runtime, seed ^ 1, &store);
        let again = schedule(&runtime, seed, &store).summary();
        assert_eq!(first, again, "seed {seed} ran two ways");
    }
}

/// Each store mutant is caught within the CI budget, from a fixed base seed.
#[test]
fn mutants_are_caught() {
    quiet_simulated_panics();
    const BUDGET: u64 = 100_000;
    for broken in [Broken::Fencing, Broken::RenewToken] {
        let store = MemoryStore::new();
        let found = explore(0, BUDGET, 1, true, || Mutant::new(&store, broken));
        let (seed, violations) = found
            .failures
            .first()
            .unwrap_or_else(|| panic!("the {broken:?} mutant survived {BUDGET} schedules"));
        to_terminal(&format!(
            "mutant {broken:?}: caught by seed {seed} after {} schedules: {}\n",
            found.schedules, violations[0]
        ));
    }
}

/// The same schedules over SQLite — real I/O on a real clock, so not replayable bit for
/// bit, and fewer of them (`IDEM_SIM_SQLITE_SCHEDULES`, 300 by default): a check that the
/// invariants hold over a store the fault wrapper does not know, not only over the
/// in-memory one. On a real clock every operation takes time, so every expired lease
/// counts as explained by a delay: this run holds SQLite's answers to the model (claims,
/// fencing, replays, what an operation dropped in flight did) and the callers' answers to
/// the bodies' records; the heartbeat's timing is the memory run's to check.
#[cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]
#[test]
fn sqlite_store_under_faults() {
    use futures_util::future::join_all;
    use support::sql::{Backend, remove_sqlite_files, sqlite_options, unique};

    /// Schedules run at once on the runtime: SQLite waits on its worker threads.
    const AT_ONCE: u64 = 25;
    /// What real I/O may add to a call's bound.
    const SQLITE_SLACK: Duration = Duration::from_secs(10);

    quiet_simulated_panics();
    let count = env_u64("IDEM_SIM_SQLITE_SCHEDULES").unwrap_or(300);
    let base = env_u64("IDEM_SIM_BASE").unwrap_or(0x5eed);
    let backend = Backend::sqlite();
    let path = sqlite_options(backend.url()).get_filename().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let (tally, failures) = runtime.block_on(async {
        let db = backend.connect(&unique("sim")).await;
        let store = &*db.store;
        let mut tally = Tally::default();
        let mut failures = Vec::new();
        for batch in (0..count).collect::<Vec<_>>().chunks(AT_ONCE as usize) {
            let plans: Vec<(u64, Plan)> = batch
                .iter()
                .map(|i| (base + i, Plan::draw(base + i)))
                .collect();
            let runs = plans
                .iter()
                .map(|(_, plan)| world::run(plan, store, SQLITE_SLACK));
            let histories = join_all(runs).await;
            for ((seed, _), history) in plans.iter().zip(histories) {
                tally.merge(&history.tally);
                if !history.violations.is_empty() {
                    failures.push((*seed, history.violations));
                }
            }
        }
        (tally, failures)
    });
    remove_sqlite_files(&path);
    let found = Found {
        schedules: count,
        tally,
        failures,
        elapsed: started.elapsed(),
    };
    report(
        &format!("simulation, SQLite under faults (base seed {base})"),
        &found,
    );
    if let Some((seed, violations)) = found.failures.first() {
        panic!(
            "SQLite schedule {seed} broke the protocol:\n  {}\nits plan: IDEM_SIM_SEED={seed} \
             replays it over the memory store",
            violations.join("\n  ")
        );
    }
}
