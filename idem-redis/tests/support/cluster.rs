//! A real Redis Cluster of three primaries (and, if asked, replicas), started by a test on
//! loopback ports (`redis-server --cluster-enabled yes`, then `redis-cli --cluster
//! create`), never the shared server; stopped and its files removed when dropped. And
//! claimers that hammer one key of it while a test reshapes the cluster under them.

use idem::redis::RedisStore;
use idem::store::Claim;
use idem::{Fingerprint, Key, Store, StoreError};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Three primaries (and their replicas) and their files, stopped and removed when dropped.
pub(crate) struct Cluster {
    nodes: Vec<Child>,
    pub(crate) ports: Vec<u16>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port whose cluster bus port (port + 10000) is free too. Each call starts the search
/// further on, so that two clusters started at once by one test process (tests run in
/// parallel) do not both pick a port that is free until the first server binds it.
fn free_cluster_port(taken: &[u16]) -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let bindable = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = u32::from(std::process::id() as u16) + 101 * CALLS.fetch_add(1, Ordering::SeqCst);
    for i in 0..2000u32 {
        let port = 20000 + ((seed * 7 + i * 13) % 10000) as u16;
        if !taken.contains(&port) && bindable(port) && bindable(port + 10000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

impl Cluster {
    /// Three primaries, no replicas.
    pub(crate) fn start() -> Cluster {
        Cluster::start_with_replicas(0)
    }

    /// Three primaries with `replicas` replicas each.
    pub(crate) fn start_with_replicas(replicas: usize) -> Cluster {
        let dir = std::env::temp_dir().join(super::unique_prefix("cluster").replace(':', "_"));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for _ in 0..3 * (1 + replicas) {
            let port = free_cluster_port(&cluster.ports);
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            cluster.nodes.push(child);
            cluster.ports.push(port);
        }
        for &port in &cluster.ports {
            wait_until(&format!("node {port} answers"), || {
                cli(port, &["ping"]).is_some_and(|out| out.contains("PONG"))
            });
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for &port in &cluster.ports {
            wait_until(&format!("node {port} sees the cluster ok"), || {
                cli(port, &["cluster", "info"]).is_some_and(|o| o.contains("cluster_state:ok"))
            });
        }
        cluster
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The `CLUSTER NODES` lines, as one node sees them, split into fields.
    fn nodes(&self) -> Vec<Vec<String>> {
        let nodes = cli(self.ports[0], &["cluster", "nodes"]).expect("cluster nodes");
        nodes
            .lines()
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    /// The node id and port of the primary that owns `slot`.
    pub(crate) fn owner(&self, slot: u16) -> (String, u16) {
        for fields in self.nodes() {
            let owns = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()),
                    (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if owns {
                return (fields[0].clone(), node_port(&fields[1]));
            }
        }
        panic!("no primary owns slot {slot}");
    }

    /// The port of a replica of the primary `primary_id`, once the cluster knows one (after
    /// `--cluster create`, replicas attach over the next moments).
    pub(crate) fn replica_of(&self, primary_id: &str) -> u16 {
        let mut found = None;
        wait_until("the primary has a replica", || {
            found = self
                .nodes()
                .iter()
                .find(|fields| fields.get(3).map(String::as_str) == Some(primary_id))
                .map(|fields| node_port(&fields[1]));
            found.is_some()
        });
        found.expect("waited for it")
    }

    /// The slot of the Redis key `key`.
    pub(crate) fn slot(&self, key: &str) -> u16 {
        cli(self.ports[0], &["cluster", "keyslot", key])
            .and_then(|s| s.trim().parse().ok())
            .expect("the key's slot")
    }
}

/// The port of a `CLUSTER NODES` address, `ip:port@bus`.
fn node_port(addr: &str) -> u16 {
    addr.split('@')
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("a node port")
}

pub(crate) fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn wait_until(what: &str, ready: impl FnMut() -> bool) {
    assert!(
        within(Duration::from_secs(20), ready),
        "timed out waiting until {what}"
    );
}

/// Whether `ready` says so within `limit` (asked every 50 ms).
pub(crate) fn within(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Whether redis-server and redis-cli are installed (else skip, or fail if required).
pub(crate) fn have_binaries() -> bool {
    let found = ["redis-server", "redis-cli"]
        .iter()
        .all(|b| Command::new(b).arg("--version").output().is_ok());
    if !found {
        assert!(
            std::env::var("IDEM_REQUIRE_SERVERS").as_deref() != Ok("1"),
            "redis-server and redis-cli are required (IDEM_REQUIRE_SERVERS=1)"
        );
        let _ = writeln!(
            std::io::stderr(),
            "note: skipping: no redis-server/redis-cli"
        );
    }
    found
}

/// What [`Claimers`] saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Claims that won the key: a second execution while its owner lives.
    pub(crate) claimed: usize,
    pub(crate) in_progress: usize,
    pub(crate) replayed: usize,
    /// `StoreError::Backend` or `Timeout`: clean errors.
    pub(crate) errors: usize,
    pub(crate) first_error: Option<String>,
}

/// 16 tasks claiming one key over and over (2 ms apart) until stopped; any other outcome
/// than those [`Seen`] counts (a wrong fingerprint, a wrong output, another error) panics.
pub(crate) struct Claimers {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Claimers {
    /// Starts claiming `key` (fingerprint `fp`) in `store`, whose completed record must hold
    /// `output`.
    pub(crate) fn start(
        store: &Arc<RedisStore>,
        key: &Key,
        fp: Fingerprint,
        output: &'static [u8],
    ) -> Claimers {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..16)
            .map(|_| {
                let (store, key, seen, stop) =
                    (store.clone(), key.clone(), seen.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let reply = store.claim(&key, &fp, Duration::from_secs(20)).await;
                        {
                            let mut seen = seen.lock().unwrap();
                            match reply {
                                Ok(Claim::Claimed(_)) => seen.claimed += 1,
                                Ok(Claim::InProgress(busy)) => {
                                    assert_eq!(busy.fingerprint, fp);
                                    seen.in_progress += 1;
                                }
                                Ok(Claim::Completed(record)) => {
                                    assert_eq!(&record.output.bytes[..], output);
                                    seen.replayed += 1;
                                }
                                Err(
                                    e @ (StoreError::Backend { .. } | StoreError::Timeout { .. }),
                                ) => {
                                    seen.first_error.get_or_insert_with(|| e.to_string());
                                    seen.errors += 1;
                                }
                                Err(e) => panic!("unexpected error: {e}"),
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Claimers { seen, stop, tasks }
    }

    /// Stops the claimers and says what they saw.
    pub(crate) async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("a claimer panicked");
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}
