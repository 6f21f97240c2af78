//! Connections kept warm between the statements of explicit batches.
//!
//! sqlx pings every connection it takes back into its pool, and hands out the one that has
//! been idle the longest: so a consumer's batches — a claim statement, the complete statement
//! after the bodies, the next batch's claims — each pay a round trip more and run on another
//! server backend, cold. On PostgreSQL that was a fifth of `run_batch`'s throughput
//! (BENCHMARKS.md, "coalescing"). So the connection of a batch statement that went well is
//! kept here for the next batch statement, for about [`IDLE`], then given back to the pool.

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a connection is kept for the next batch statement: a consumer's next statement
/// comes within milliseconds. A task gives back what is kept longer, looking every `IDLE`:
/// an idle store holds nothing after twice this, and a `Pool::close`, which waits for every
/// connection, waits that long at most.
const IDLE: Duration = Duration::from_millis(20);
/// At most this many connections are kept, and at most a quarter of the pool's: the rest
/// of the application keeps the pool (a pool of fewer than 4 keeps none).
const MAX: usize = 4;

/// The warm connections of one store (shared by its clones).
pub(crate) struct Warm<DB: Database> {
    kept: Mutex<Vec<(PoolConnection<DB>, Instant)>>,
    /// A task gives back connections kept past [`IDLE`]; at most one at a time.
    reaping: AtomicBool,
}

impl<DB: Database> Default for Warm<DB> {
    fn default() -> Self {
        Warm {
            kept: Mutex::new(Vec::new()),
            reaping: AtomicBool::new(false),
        }
    }
}

impl<DB: Database> Warm<DB> {
    /// The connection kept last, if one is still fresh.
    pub(crate) fn take(&self) -> Option<PoolConnection<DB>> {
        let (last, stale) = {
            let mut kept = self.lock();
            (kept.pop(), stale(&mut kept))
        };
        drop(stale);
        last.filter(|(_, at)| at.elapsed() < IDLE)
            .map(|(conn, _)| conn)
    }

    /// Keeps `conn` for the next batch statement, or gives it back to `pool` at once (a
    /// small pool, enough kept already, no runtime to give it back later).
    pub(crate) fn keep(self: &Arc<Self>, pool: &Pool<DB>, conn: PoolConnection<DB>) {
        let most = MAX.min(pool.options().get_max_connections() as usize / 4);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let refused = {
            let mut kept = self.lock();
            if kept.len() < most {
                kept.push((conn, Instant::now()));
                None
            } else {
                Some(conn)
            }
        };
        if refused.is_none() && !self.reaping.swap(true, Ordering::AcqRel) {
            runtime.spawn(self.clone().reap());
        }
    }

    /// Gives back what is kept past [`IDLE`], until nothing is kept.
    async fn reap(self: Arc<Self>) {
        loop {
            tokio::time::sleep(IDLE).await;
            let (stale, empty) = {
                let mut kept = self.lock();
                (stale(&mut kept), kept.is_empty())
            };
            drop(stale);
            if !empty {
                continue;
            }
            self.reaping.store(false, Ordering::Release);
            // A connection kept between the check and the store found a reaper running:
            // go on reaping for it, unless another reaper started since.
            if self.lock().is_empty() || self.reaping.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<DB>, Instant)>> {
        // The list stays whole whatever panicked while it was locked.
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes the connections kept past [`IDLE`] out of `kept`, to be dropped (given back to the
/// pool) once the lock is released.
fn stale<DB: Database>(kept: &mut Vec<(PoolConnection<DB>, Instant)>) -> Vec<PoolConnection<DB>> {
    kept.extract_if(.., |(_, at)| at.elapsed() >= IDLE)
        .map(|(conn, _)| conn)
        .collect()
}
