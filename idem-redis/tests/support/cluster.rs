//! A real Redis Cluster of three primaries, started by a test on loopback ports
//! (`redis-server --cluster-enabled yes`, then `redis-cli --cluster create`), never the
//! shared server; stopped and its files removed when dropped.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Three primaries and their files, stopped and removed when dropped.
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
    pub(crate) fn start() -> Cluster {
        let dir = std::env::temp_dir().join(super::unique_prefix("cluster").replace(':', "_"));
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

    pub(crate) fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

pub(crate) fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
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
