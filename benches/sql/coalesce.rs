//! Coalesced claims and completes (`with_coalescing(true)`) against the per-call protocol
//! (the same store without it), both through `#[idempotent]` on the same pool, in the same
//! run, in tables of the same shape:
//!
//! - criterion groups `<backend>/coalesce_fresh_256` and `…_replay_256`: 256 tasks calling
//!   back to back, on fresh keys (claim, body, complete), or each on its own recorded key
//!   (a replay); throughput in keys/s.
//! - then (unless `IDEM_BENCH_PAIRED=0`) the same interleaved round by round, printed to
//!   stderr with keys/s and each call's latency (p50, p99), and one caller on fresh keys
//!   and on a replay (`paired::paired`: the ratio coalesced / per call, which must stay
//!   ≤ 1.05).
//!
//! `cargo bench --bench sql --features sqlite,postgres,mysql -- coalesce`.

use crate::support::clock::Clock;
use crate::support::measure::{Mode, Protocol, Timing};
use crate::support::paired;
use crate::support::payload::{Transfer, fresh_requests};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Concurrent callers.
const CALLERS: u64 = 256;
/// Interleaved rounds of the latency measurement, and the time each side gets per round.
const ROUNDS: usize = 8;
const ROUND_SIDE: Duration = Duration::from_millis(600);
/// The ceiling's connections, and the keys of each of their batches.
const BY_HAND: usize = 2;
pub(crate) const BATCH: usize = 128;

/// What the callers call with.
#[derive(Clone, Copy, PartialEq)]
enum Keys {
    /// A new key per call.
    Fresh,
    /// Each caller its own recorded key, again and again.
    Replay,
}

/// The per-call store (`per_call`) and the coalesced one (`coalesced`) of one backend.
pub(crate) fn bench<P: Protocol>(
    c: &mut Criterion,
    backend: &str,
    rt: &Runtime,
    (per_call, coalesced): (&P, &P),
) {
    // Every caller's recorded key, recorded on both sides.
    let recorded = fresh_requests(CALLERS);
    rt.block_on(async {
        for req in &recorded {
            let a = per_call.fresh(req.clone()).await;
            assert_eq!(coalesced.fresh(req.clone()).await, a);
        }
    });
    let cases = [("fresh_256", Keys::Fresh), ("replay_256", Keys::Replay)];
    for (name, keys) in cases {
        let mut group = c.benchmark_group(format!("{backend}/coalesce_{name}"));
        group.throughput(Throughput::Elements(1));
        bench_one(&mut group, "per_call", rt, per_call, keys, &recorded);
        bench_one(&mut group, "coalesced", rt, coalesced, keys, &recorded);
        group.finish();
    }
    for (name, keys) in cases {
        let label = format!("{backend}/coalesce_{name}");
        if paired::wanted(&label) {
            latencies(rt, &label, (per_call, coalesced), keys, &recorded);
        }
    }
    for (name, mode) in [
        ("coalesce_1_fresh", Mode::Fresh),
        ("coalesce_1_replay", Mode::Replay),
    ] {
        let label = format!("{backend}/{name}");
        if paired::wanted(&label) {
            let how = (mode, Timing::Wall);
            paired::paired(
                rt,
                &label,
                ("coalesced", coalesced),
                ("per_call", per_call),
                how,
            );
        }
    }
}

/// Fresh keys four ways, each side in a new table of its own and writing as many keys per
/// round as the others (a table's size changes what a key costs), interleaved in
/// [`ROUNDS`] rounds: keys/s (medians) printed to stderr.
///
/// - `per_call` and `coalesced`: [`CALLERS`] callers through `#[idempotent]`;
/// - `batched(rounds)`: `Idempotent::run_batch` of [`BATCH`] calls, `rounds` times, on
///   each of [`BY_HAND`] pipelines at once;
/// - `by_hand(rounds)`: the same batches' two statements written by hand (`batched.rs`),
///   on as many connections — the ceiling: what the database takes for this work when the
///   client costs next to nothing. `false` where the backend has none written.
pub(crate) fn ceiling<P, B, H>(
    rt: &Runtime,
    backend: &str,
    (per_call, coalesced): (&P, &P),
    batched: impl Fn(usize) -> B,
    by_hand: impl Fn(usize) -> H,
) where
    P: Protocol,
    B: Future<Output = ()> + Send + 'static,
    H: Future<Output = bool> + Send + 'static,
{
    // Each pipeline on a task of its own, as a consumer's batches would run.
    let pipelines = |pipeline: &dyn Fn() -> tokio::task::JoinHandle<bool>| {
        rt.block_on(async {
            let tasks: Vec<_> = (0..BY_HAND).map(|_| pipeline()).collect();
            let mut all = true;
            for task in tasks {
                all &= task.await.unwrap();
            }
            all
        })
    };
    let label = format!("{backend}/coalesce_ceiling");
    if !paired::wanted(&label) {
        return;
    }
    // Per round and side: 40 × 256 keys.
    let (per_task, rounds) = (40, 40 * CALLERS as usize / (BY_HAND * BATCH));
    let keys = (BY_HAND * rounds * BATCH) as f64;
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut cpu: [Vec<f64>; 4] = Default::default();
    for round in 0..ROUNDS {
        let mut order = [0, 1, 2, 3];
        if round % 2 == 1 {
            order.reverse();
        }
        for side in order {
            let start = Instant::now();
            let clock = Clock::process_cpu();
            let rate = match side {
                0 | 1 => {
                    let p = [per_call, coalesced][side];
                    let ((time, _), calls) = run(rt, p, Keys::Fresh, per_task, &[], false);
                    calls as f64 / time.as_secs_f64()
                }
                2 => {
                    pipelines(&|| {
                        let batches = batched(rounds);
                        rt.spawn(async move {
                            batches.await;
                            true
                        })
                    });
                    keys / start.elapsed().as_secs_f64()
                }
                _ => {
                    if !pipelines(&|| rt.spawn(by_hand(rounds))) {
                        return;
                    }
                    keys / start.elapsed().as_secs_f64()
                }
            };
            if let Some(clock) = clock {
                cpu[side].push(clock.elapsed().as_secs_f64() * 1e6 / keys);
            }
            rates[side].push(rate);
        }
    }
    let median = |mut r: Vec<f64>| {
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let [per_call, coalesced, batched, by_hand] = rates.map(median);
    let [cpu_pc, cpu_co, cpu_rb, cpu_bh] = cpu.map(median);
    eprintln!(
        "coalesce {label:<28} per_call {per_call:>8.0}  coalesced {coalesced:>8.0}  \
         run_batch ({BY_HAND} × {BATCH}) {batched:>8.0}  by hand {by_hand:>8.0} keys/s  \
         coalesced/per_call {:.2}  run_batch/per_call {:.2}  run_batch/by_hand {:.2} \
         ({ROUNDS} rounds)  client cpu per key {cpu_pc:.1} / {cpu_co:.1} / {cpu_rb:.1} / \
         {cpu_bh:.1} µs",
        coalesced / per_call,
        batched / per_call,
        batched / by_hand,
    );
}

fn bench_one<P: Protocol>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &Runtime,
    p: &P,
    keys: Keys,
    recorded: &[Transfer],
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (elapsed, calls) = run(rt, p, keys, iters.div_ceil(CALLERS), recorded, false);
            elapsed.0.mul_f64(iters as f64 / calls as f64)
        })
    });
}

/// [`CALLERS`] tasks making `per_task` calls each: how long they took all together, how
/// many calls they made, and (if `timed`) each call's latency.
fn run<P: Protocol>(
    rt: &Runtime,
    p: &P,
    keys: Keys,
    per_task: u64,
    recorded: &[Transfer],
    timed: bool,
) -> ((Duration, Vec<Duration>), u64) {
    rt.block_on(async {
        let requests: Vec<Vec<Transfer>> = (0..CALLERS as usize)
            .map(|t| match keys {
                Keys::Fresh => fresh_requests(per_task),
                Keys::Replay => vec![recorded[t].clone(); per_task as usize],
            })
            .collect();
        let start = Instant::now();
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|reqs| {
                let p = p.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(if timed { reqs.len() } else { 0 });
                    for req in reqs {
                        let called = Instant::now();
                        match keys {
                            Keys::Fresh => black_box(p.fresh(req).await),
                            Keys::Replay => black_box(p.replay(req).await),
                        };
                        if timed {
                            latencies.push(called.elapsed());
                        }
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        ((start.elapsed(), latencies), per_task * CALLERS)
    })
}

/// Per call against coalesced, interleaved in [`ROUNDS`] rounds (ABBA): keys/s (median of
/// the rounds), the latency of every call (p50, p99) and this process's CPU time per call
/// (median of the rounds), printed to stderr.
fn latencies<P: Protocol>(
    rt: &Runtime,
    label: &str,
    (per_call, coalesced): (&P, &P),
    keys: Keys,
    recorded: &[Transfer],
) {
    // Size the rounds by a short first one of each side (which also warms both up).
    let probe = |p: &P| {
        let ((time, _), calls) = run(rt, p, keys, 4, recorded, false);
        calls as f64 / time.as_secs_f64()
    };
    let rate = probe(per_call).max(probe(coalesced));
    let per_task = ((rate * ROUND_SIDE.as_secs_f64()) as u64 / CALLERS).clamp(2, 400);
    let mut sides: [(Vec<f64>, Vec<Duration>); 2] = Default::default();
    let mut cpu: [Vec<f64>; 2] = Default::default();
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let p = [per_call, coalesced][side];
            let clock = Clock::process_cpu();
            let ((time, latencies), calls) = run(rt, p, keys, per_task, recorded, true);
            if let Some(clock) = clock {
                cpu[side].push(clock.elapsed().as_secs_f64() * 1e6 / calls as f64);
            }
            sides[side].0.push(calls as f64 / time.as_secs_f64());
            sides[side].1.extend(latencies);
        }
    }
    let summary = |(rates, latencies): &mut (Vec<f64>, Vec<Duration>)| {
        rates.sort_by(f64::total_cmp);
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        (rates[rates.len() / 2], at(0.50), at(0.99))
    };
    let [a, b] = &mut sides;
    let (a, b) = (summary(a), summary(b));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let [cpu_a, cpu_b] = cpu.map(|mut c| {
        c.sort_by(f64::total_cmp);
        c.get(c.len() / 2).copied().unwrap_or(f64::NAN)
    });
    eprintln!(
        "coalesce {label:<28} per_call {:>8.0} keys/s (p50 {:>6.2} ms, p99 {:>6.2} ms)  \
         coalesced {:>8.0} keys/s (p50 {:>6.2} ms, p99 {:>6.2} ms)  ratio {:.2} \
         ({ROUNDS} rounds × {} calls)  cpu {cpu_a:.1} / {cpu_b:.1} µs per call",
        a.0,
        ms(a.1),
        ms(a.2),
        b.0,
        ms(b.1),
        ms(b.2),
        b.0 / a.0,
        per_task * CALLERS,
    );
}
