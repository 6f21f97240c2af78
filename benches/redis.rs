//! `RedisStore` through `#[idempotent]` against a hand-written minimal protocol on the same
//! server, through the same connection, in the same run. The figure that matters is the
//! ratio (BENCHMARKS.md).
//!
//! Criterion measures `idem` (the macro on the store) and `baseline`:
//!
//! - `redis/fresh`: a new key per call. The baseline is `SET key val NX PX <lease>` (an
//!   in-progress value: state byte, fingerprint, token), the body, and
//!   `SET key val XX PX <ttl>` (state byte, fingerprint, bincode output): two round trips,
//!   as idem's claim (`SET … NX PX … GET`) and complete (a script) are.
//! - `redis/replay`: the recorded key. The baseline is one `GET`, the state and fingerprint
//!   check and the decode; idem's is its claim, `SET … NX PX … GET`, which finds the
//!   completed record, returns it and writes nothing.
//! - `redis/fresh_16_tasks`: 16 tasks on the 2-worker runtime, fresh distinct keys
//!   (throughput).
//!
//! Then, unless `IDEM_BENCH_PAIRED=0`, paired measurements (`benches/support/paired.rs`)
//! print (to stderr) the same comparisons interleaved round by round, which is what
//! resolves a 10% difference on a machine whose other users come and go, with this
//! process's CPU time per call; and the server's own time per command (`INFO
//! commandstats`: `EVALSHA` idem's complete, `SET` both sides' claims and the baseline's
//! complete, `GET` the baseline's replay) over the run.
//!
//! Both sides compute a SHA-256 key digest and a 256-bit fingerprint of the request, and
//! share one multiplexed `redis::aio::ConnectionManager` (the store by
//! `RedisStore::from_manager`). Keys live under a prefix of the run's own, deleted at the
//! end. Times are wall-clock: a call is mostly waiting for the server, which CPU time would
//! not see. The server is `IDEM_TEST_REDIS_URL` (as the tests), by default this machine's
//! `redis://127.0.0.1:6379`; if it cannot be reached the bench is skipped with a note.

mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use idem::idempotent;
use idem::redis::RedisStore;
use idem::redis::redis::{self, AsyncCommands, aio::ConnectionManager};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::measure::{self, Mode, Protocol, Timing};
use support::paired;
use support::payload::{REPLAYED, Receipt, Transfer, fresh_requests, request, settle};
use tokio::runtime::Runtime;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const TTL: Duration = Duration::from_secs(24 * 60 * 60);
const LEASE: Duration = Duration::from_secs(30);
/// The baseline's namespace, as idem's is the function's path.
const NAMESPACE: &str = "redis::transfer";

// ---------------------------------------------------------------------------------------
// idem's side.

#[idempotent(key = req.request_id, scope = req.user_id, store = store)]
async fn transfer_redis(store: &RedisStore, req: Transfer) -> Result<Receipt, idem::Error> {
    Ok(settle(&req))
}

#[derive(Clone)]
struct Idem(RedisStore);

impl Protocol for Idem {
    async fn fresh(&self, req: Transfer) -> Receipt {
        transfer_redis(&self.0, req).await.unwrap()
    }
    async fn replay(&self, req: Transfer) -> Receipt {
        transfer_redis(&self.0, req).await.unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// The hand-written baseline: what one would write without idem.

/// The value's first byte: in progress, or done.
const IN_PROGRESS: u8 = b'p';
const DONE: u8 = b'd';

static TOKENS: AtomicU64 = AtomicU64::new(1);

#[derive(Clone)]
struct Baseline {
    conn: ConnectionManager,
    prefix: String,
}

/// What the baseline computes before it talks to Redis, as idem does: the record's key
/// (prefix + hex of the key digest) and the request's fingerprint.
struct Prepared {
    key: String,
    fingerprint: [u8; 32],
}

impl Baseline {
    fn prepare(&self, req: &Transfer) -> Prepared {
        let mut h = Sha256::new();
        h.update(NAMESPACE.as_bytes());
        h.update(req.user_id.to_le_bytes());
        h.update((req.request_id.len() as u64).to_le_bytes());
        h.update(req.request_id.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let mut key = String::with_capacity(self.prefix.len() + 64);
        key.push_str(&self.prefix);
        for b in digest {
            key.push_str(&format!("{b:02x}"));
        }
        let bytes = bincode::serde::encode_to_vec(req, bincode::config::standard()).unwrap();
        Prepared {
            key,
            fingerprint: Sha256::digest(&bytes).into(),
        }
    }
}

impl Protocol for Baseline {
    async fn fresh(&self, req: Transfer) -> Receipt {
        let p = self.prepare(&req);
        let mut conn = self.conn.clone();
        let mut claim = Vec::with_capacity(41);
        claim.push(IN_PROGRESS);
        claim.extend_from_slice(&p.fingerprint);
        claim.extend_from_slice(&TOKENS.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let claimed: Option<String> = redis::cmd("SET")
            .arg(&p.key)
            .arg(claim)
            .arg("NX")
            .arg("PX")
            .arg(LEASE.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(claimed.is_some(), "fresh keys are new");
        let receipt = settle(&req);
        let mut done = Vec::with_capacity(96);
        done.push(DONE);
        done.extend_from_slice(&p.fingerprint);
        bincode::serde::encode_into_std_write(&receipt, &mut done, bincode::config::standard())
            .unwrap();
        let completed: Option<String> = redis::cmd("SET")
            .arg(&p.key)
            .arg(done)
            .arg("XX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(completed.is_some(), "the claim is there");
        receipt
    }

    async fn replay(&self, req: Transfer) -> Receipt {
        let p = self.prepare(&req);
        let value: Vec<u8> = self.conn.clone().get(&p.key).await.unwrap();
        assert_eq!(value.first(), Some(&DONE), "a completed record");
        assert_eq!(value[1..33], p.fingerprint, "payload mismatch");
        bincode::serde::decode_from_slice(&value[33..], bincode::config::standard())
            .unwrap()
            .0
    }
}

// ---------------------------------------------------------------------------------------
// Setup, the benches, teardown.

fn runtime() -> Runtime {
    // One runtime for everything: the connection's socket belongs to the runtime that
    // opened it.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A prefix no other run uses.
fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "idem_bench:{}_{:x}:",
        std::process::id(),
        nanos & 0xffff_ffff
    )
}

/// The server's `INFO commandstats`: calls and microseconds per command.
async fn commandstats(conn: &mut ConnectionManager) -> HashMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('=')?.parse().ok())
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// Deletes every key under `prefix`; how many there were.
async fn delete_under(conn: &mut ConnectionManager, prefix: &str) -> u64 {
    let mut cursor = 0u64;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            deleted += keys.len() as u64;
            let _: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(conn)
                .await
                .unwrap();
        }
        if next == 0 {
            return deleted;
        }
        cursor = next;
    }
}

fn bench_redis(c: &mut Criterion) {
    support::payload::sizes("redis");
    let rt = runtime();
    let url = std::env::var("IDEM_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| REDIS_URL.to_owned());
    let connected = rt.block_on(async {
        let client = redis::Client::open(url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(1);
        client.get_connection_manager_with_config(config).await
    });
    let mut conn = match connected {
        Ok(conn) => conn,
        Err(e) => return eprintln!("note: SKIPPED the Redis benches: cannot reach {url}: {e}"),
    };
    let prefix = unique_prefix();
    let idem = Idem(
        RedisStore::from_manager(conn.clone())
            .with_prefix(&prefix)
            .unwrap(),
    );
    let baseline = Baseline {
        conn: conn.clone(),
        prefix: format!("{prefix}base:"),
    };

    // Record the replayed key on both sides, and check that they agree.
    let before = rt.block_on(async {
        let recorded = idem.fresh(request(REPLAYED)).await;
        assert_eq!(baseline.fresh(request(REPLAYED)).await, recorded);
        assert_eq!(idem.replay(request(REPLAYED)).await, recorded);
        assert_eq!(baseline.replay(request(REPLAYED)).await, recorded);
        let req = fresh_requests(1).remove(0);
        assert_eq!(baseline.fresh(req.clone()).await, settle(&req));
        commandstats(&mut conn).await
    });

    for (group, mode) in Mode::GROUPS {
        let mut group = c.benchmark_group(format!("redis/{group}"));
        group.throughput(Throughput::Elements(1));
        let how = (mode, Timing::Wall);
        measure::bench(&mut group, "idem", &rt, how, || idem.clone());
        measure::bench(&mut group, "baseline", &rt, how, || baseline.clone());
        group.finish();
    }

    for (group, mode) in Mode::GROUPS {
        let label = format!("redis/{group}");
        if paired::wanted(&label) {
            let how = (mode, Timing::Wall);
            paired::paired(&rt, &label, ("idem", &idem), ("baseline", &baseline), how);
        }
    }

    rt.block_on(async {
        // The server's time per command over the run (every client of the server counts).
        let after = commandstats(&mut conn).await;
        for cmd in ["evalsha", "set", "get"] {
            let (c0, u0) = before.get(cmd).copied().unwrap_or_default();
            let (c1, u1) = after.get(cmd).copied().unwrap_or_default();
            if c1 > c0 {
                let per_call = (u1 - u0) as f64 / (c1 - c0) as f64;
                eprintln!(
                    "redis server: {cmd:>8} {:>9} calls, {per_call:.2} µs each",
                    c1 - c0
                );
            }
        }
        let deleted = delete_under(&mut conn, &prefix).await;
        eprintln!("redis bench: deleted {deleted} keys under {prefix}");
    });
}

criterion_group! {
    name = benches;
    config = paired::criterion();
    targets = bench_redis
}
criterion_main!(benches);
