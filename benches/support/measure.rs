//! Timing a protocol's calls: sequential calls with fresh keys, with the recorded key, or
//! fresh keys from 16 concurrent tasks; criterion benches of them.

use super::clock::Clock;
use super::payload::{REPLAYED, Receipt, Transfer, fresh_requests, request};
use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use std::future::Future;
use std::hint::black_box;
use std::time::Duration;
use tokio::runtime::Runtime;

/// One way to make the benches' call: through idem, by hand, through a peer crate.
pub(crate) trait Protocol: Clone + Send + Sync + 'static {
    /// A call whose key was never seen: claim, run the body, record its output.
    fn fresh(&self, req: Transfer) -> impl Future<Output = Receipt> + Send;
    /// A call whose key is recorded: the recorded output, the body does not run.
    fn replay(&self, req: Transfer) -> impl Future<Output = Receipt> + Send;
}

/// Concurrent tasks in [`Mode::Tasks`].
pub(crate) const TASKS: u64 = 16;

/// Which calls a measurement makes.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// Sequential calls with fresh keys.
    Fresh,
    /// Sequential calls with the recorded key ([`REPLAYED`]).
    Replay,
    /// [`TASKS`] spawned tasks, each making sequential calls with fresh keys.
    Tasks,
}

impl Mode {
    /// Every mode, with the name of its criterion group (after the bench's prefix).
    pub(crate) const GROUPS: [(&str, Mode); 3] = [
        ("fresh", Mode::Fresh),
        ("replay", Mode::Replay),
        ("fresh_16_tasks", Mode::Tasks),
    ];
}

/// What a measurement's time is.
#[derive(Clone, Copy)]
pub(crate) enum Timing {
    /// Wall-clock time ([`Clock::wall`]): for calls that mostly wait for a server.
    Wall,
    /// CPU time: of the calling thread for sequential calls ([`Clock::thread`]), of the
    /// whole process for the tasks ([`Clock::process`]), so that their figure is CPU time
    /// per call and throughput is its inverse.
    Cpu,
}

impl Timing {
    fn clock(self, mode: Mode) -> Clock {
        match (self, mode) {
            (Timing::Wall, _) => Clock::wall(),
            (Timing::Cpu, Mode::Tasks) => Clock::process(),
            (Timing::Cpu, _) => Clock::thread(),
        }
    }
}

/// About `calls` calls of `p` in `mode` on `rt`, timed by `timing`: the time they took,
/// and how many they were (the tasks round up to a multiple of [`TASKS`]). Requests are
/// built before the clock starts.
pub(crate) fn run<P: Protocol>(
    rt: &Runtime,
    p: &P,
    mode: Mode,
    calls: u64,
    timing: Timing,
) -> (Duration, u64) {
    rt.block_on(async {
        match mode {
            Mode::Fresh => {
                let reqs = fresh_requests(calls);
                let start = timing.clock(mode);
                for req in reqs {
                    black_box(p.fresh(req).await);
                }
                (start.elapsed(), calls)
            }
            Mode::Replay => {
                let reqs = vec![request(REPLAYED); calls as usize];
                let start = timing.clock(mode);
                for req in reqs {
                    black_box(p.replay(req).await);
                }
                (start.elapsed(), calls)
            }
            Mode::Tasks => {
                let per_task = calls.div_ceil(TASKS);
                let batches: Vec<Vec<Transfer>> =
                    (0..TASKS).map(|_| fresh_requests(per_task)).collect();
                let start = timing.clock(mode);
                let handles: Vec<_> = batches
                    .into_iter()
                    .map(|reqs| {
                        let p = p.clone();
                        tokio::spawn(async move {
                            for req in reqs {
                                black_box(p.fresh(req).await);
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.await.unwrap();
                }
                (start.elapsed(), per_task * TASKS)
            }
        }
    })
}

/// One criterion bench, `name` in `group`: `iter_custom` over [`run`], with the protocol
/// `make` gives for each sample (made inside `rt`, before the clock starts: a new store
/// per sample, or a clone of a shared one).
pub(crate) fn bench<P: Protocol>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &Runtime,
    (mode, timing): (Mode, Timing),
    make: impl Fn() -> P,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let p = {
                let _in_runtime = rt.enter();
                make()
            };
            let (elapsed, calls) = run(rt, &p, mode, iters, timing);
            // Per requested iteration (the tasks may make a few more calls than asked).
            elapsed.mul_f64(iters as f64 / calls as f64)
        })
    });
}
