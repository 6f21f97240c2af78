//! The conformance suite and a 64-task race on a real Redis Cluster of three primaries,
//! started by this test on loopback ports (`redis-server --cluster-enabled yes`, then
//! `redis-cli --cluster create`), never the shared server; stopped when the test ends.

mod support;

use idem::redis::RedisStore;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Three primaries and their files, stopped and removed when dropped.
struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
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

/// A port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port(taken: &[u16]) -> u16 {
    let bindable = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = u32::from(std::process::id() as u16);
    for i in 0..2000u32 {
        let port = 20000 + ((seed * 7 + i * 13) % 10000) as u16;
        if !taken.contains(&port) && bindable(port) && bindable(port + 10000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

impl Cluster {
    fn start() -> Cluster {
        let dir = std::env::temp_dir().join(support::unique_prefix("cluster").replace(':', "_"));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for _ in 0..3 {
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
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether redis-server and redis-cli are installed (else skip, or fail if required).
fn have_binaries() -> bool {
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

/// Every conformance check, one after another.
macro_rules! run_checks {
    ($store:ident $($check:ident),* $(,)?) => {$(
        let started = Instant::now();
        idem::testing::$check(&$store).await;
        eprintln!(
            "cluster: {} ok in {:?}",
            stringify!($check),
            started.elapsed()
        );
    )*};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_and_race_on_a_three_primary_cluster() {
    if !have_binaries() {
        return;
    }
    let cluster = Cluster::start();
    let store = RedisStore::connect_cluster(cluster.urls())
        .await
        .expect("connect to the cluster")
        .with_prefix(&support::unique_prefix("cluster"))
        .expect("prefix");
    let store = Arc::new(store);
    idem_core::__conformance_checks!((run_checks)(store));

    // 64 racers on each of several keys (so on several slots and primaries).
    support::race::racers_run_the_body_once(&store, "cluster-race", 6).await;

    // The records really spread over the primaries.
    let holding = cluster
        .ports
        .iter()
        .filter(|&&port| cli(port, &["dbsize"]).is_some_and(|n| n.trim() != "0"))
        .count();
    assert_eq!(holding, 3, "every primary holds records");
}
