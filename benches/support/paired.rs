//! Paired measurements: two protocols interleaved round by round, which is what resolves a
//! 10% difference on a machine whose other users come and go (criterion's groups run all of
//! one side's samples, then all of the other's).

use super::clock::Clock;
use super::measure::{Mode, Protocol, Timing, run};
use std::time::Duration;
use tokio::runtime::Runtime;

/// Criterion's settings for the server benches that also run paired measurements: short
/// groups (the paired rounds are what resolve the ratio), no plots.
pub(crate) fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .nresamples(20_000)
        .without_plots()
}

/// Rounds of a paired measurement, and the time each side gets per round.
const ROUNDS: usize = 16;
const ROUND_SIDE: Duration = Duration::from_millis(100);

/// What one block of calls cost.
struct Sample {
    time: Duration,
    /// This process's CPU time over the block.
    cpu: Option<Duration>,
    calls: u64,
}

impl Sample {
    fn time_us(&self) -> f64 {
        self.time.as_secs_f64() * 1e6 / self.calls as f64
    }

    fn cpu_us(&self) -> f64 {
        self.cpu
            .map_or(f64::NAN, |c| c.as_secs_f64() * 1e6 / self.calls as f64)
    }
}

/// About `calls` calls of `p` in `mode` ([`run`]), and this process's CPU time over them.
fn sample<P: Protocol>(rt: &Runtime, p: &P, (mode, timing): (Mode, Timing), calls: u64) -> Sample {
    let cpu = Clock::process_cpu();
    let (time, calls) = run(rt, p, mode, calls, timing);
    Sample {
        time,
        cpu: cpu.map(|c| c.elapsed()),
        calls,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// `a` against `b`, interleaved: rounds of one block of calls of each, in ABBA order, so
/// that load from other processes falls on both sides alike. Prints (to stderr) the medians
/// of the time per call and of the per-round ratios a/b, with the ratios' interquartile
/// range, and the medians of this process's CPU time per call (the client's work; for
/// SQLite also the database's).
pub(crate) fn paired<A: Protocol, B: Protocol>(
    rt: &Runtime,
    label: &str,
    (a_name, a): (&str, &A),
    (b_name, b): (&str, &B),
    how: (Mode, Timing),
) {
    // Size the blocks by a short first one of each (which also warms both up).
    let probe = sample(rt, a, how, 32)
        .time_us()
        .max(sample(rt, b, how, 32).time_us());
    let calls = ((ROUND_SIDE.as_secs_f64() * 1e6 / probe) as u64).clamp(16, 5_000);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            xs.push(sample(rt, a, how, calls));
            ys.push(sample(rt, b, how, calls));
        } else {
            ys.push(sample(rt, b, how, calls));
            xs.push(sample(rt, a, how, calls));
        }
    }
    let ratios: Vec<f64> = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| x.time_us() / y.time_us())
        .collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let (lo, hi) = (sorted[ROUNDS / 4], sorted[ROUNDS - 1 - ROUNDS / 4]);
    let med = |s: &[Sample], f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
    eprintln!(
        "paired {label:<22} {a_name:>16} {:>8.1} µs  {b_name:>16} {:>8.1} µs  \
         ratio {:.3} (IQR {lo:.3}–{hi:.3}; {ROUNDS} rounds × {calls} calls)  \
         cpu {:.1} / {:.1} µs",
        med(&xs, Sample::time_us),
        med(&ys, Sample::time_us),
        median(ratios),
        med(&xs, Sample::cpu_us),
        med(&ys, Sample::cpu_us),
    );
}

/// Whether to make the paired measurement `label`: only when criterion measures (`cargo
/// bench`, not `--test`, `--list` or `--profile-time`), unless `IDEM_BENCH_PAIRED=0`, and
/// when a criterion filter is given, only if `label` contains it or it contains `label`
/// (plain text: `postgres`, `replay`, `mysql/fresh_16_tasks`).
pub(crate) fn wanted(label: &str) -> bool {
    /// Criterion options that take a value (the value is not a filter).
    const VALUED: &[&str] = &[
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--color",
        "--profile-time",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
        "--format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| {
        args.iter()
            .any(|a| a == f || a.starts_with(&format!("{f}=")))
    };
    if !flag("--bench") || flag("--test") || flag("--list") || flag("--profile-time") {
        return false;
    }
    if std::env::var("IDEM_BENCH_PAIRED").as_deref() == Ok("0") {
        return false;
    }
    let mut filter = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg.starts_with('-') {
            if VALUED.contains(&arg.as_str()) {
                rest.next();
            }
        } else {
            filter = Some(arg.as_str());
        }
    }
    filter.is_none_or(|f| label.contains(f) || f.contains(label))
}
