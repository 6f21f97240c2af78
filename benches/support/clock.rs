//! Clocks that do not count other processes' time slices.

use std::time::{Duration, Instant};

/// A stopwatch over one of three clocks.
///
/// On Linux [`Clock::thread`] and [`Clock::process`] read CPU time, so that the time slices
/// the scheduler gives other processes on the (2, shared) cores are not counted:
/// [`Clock::thread`] for single-threaded cases (everything they do runs on the thread that
/// calls `block_on`; moka 0.12 has no background threads), [`Clock::process`] for
/// multi-threaded ones (all the runtime's workers). Elsewhere, or with `IDEM_BENCH_WALL=1`,
/// they are wall-clock time. [`Clock::wall`] is always wall-clock time (the SQL benches,
/// whose calls mostly wait for the server), and [`Clock::process_cpu`] always CPU time.
pub(crate) struct Clock {
    kind: Kind,
    start: Duration,
}

#[derive(Clone, Copy)]
enum Kind {
    Wall,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Thread,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Process,
}

fn read(kind: Kind) -> Duration {
    #[cfg(target_os = "linux")]
    {
        use rustix::time::{ClockId, clock_gettime};
        let id = match kind {
            Kind::Thread => Some(ClockId::ThreadCPUTime),
            Kind::Process => Some(ClockId::ProcessCPUTime),
            Kind::Wall => None,
        };
        if let Some(id) = id {
            let t = clock_gettime(id);
            return Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
        }
    }
    let _ = kind;
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

fn cpu(kind: Kind) -> Kind {
    if cfg!(target_os = "linux") && std::env::var_os("IDEM_BENCH_WALL").is_none() {
        kind
    } else {
        Kind::Wall
    }
}

impl Clock {
    fn start(kind: Kind) -> Clock {
        Clock {
            kind,
            start: read(kind),
        }
    }

    /// CPU time of the calling thread.
    pub(crate) fn thread() -> Clock {
        Clock::start(cpu(Kind::Thread))
    }

    /// CPU time of the whole process, all threads.
    pub(crate) fn process() -> Clock {
        Clock::start(cpu(Kind::Process))
    }

    /// Wall-clock time.
    pub(crate) fn wall() -> Clock {
        Clock::start(Kind::Wall)
    }

    /// CPU time of the whole process (every thread: a runtime's, and sqlx's SQLite worker
    /// threads), where it can be read, whatever `IDEM_BENCH_WALL` says.
    pub(crate) fn process_cpu() -> Option<Clock> {
        cfg!(target_os = "linux").then(|| Clock::start(Kind::Process))
    }

    /// Time since the clock started.
    pub(crate) fn elapsed(&self) -> Duration {
        read(self.kind).saturating_sub(self.start)
    }
}

/// Times `iters` calls of `f` with [`Clock::thread`].
pub(crate) fn time<R>(iters: u64, mut f: impl FnMut() -> R) -> Duration {
    let start = Clock::thread();
    for _ in 0..iters {
        std::hint::black_box(f());
    }
    start.elapsed()
}
