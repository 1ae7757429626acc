//! A throw-away `redis-server` on a free loopback port, for tests and for
//! `cake bench store --tier redis` without `--redis-url`. Nothing is
//! persisted (`--save '' --appendonly no`); the server is killed on drop.

// Waits for a real redis-server process (engine/clippy.toml).
#![allow(clippy::disallowed_types)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LocalRedis {
    binary: PathBuf,
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl LocalRedis {
    /// For tests: a started server, or `None` (with the reason printed)
    /// when none can start — unless `CAKE_REQUIRE_REDIS=1`, where that
    /// panics, so a CI run cannot pass by skipping.
    pub fn for_test(extra: &[&str]) -> Option<LocalRedis> {
        let required = std::env::var("CAKE_REQUIRE_REDIS").is_ok_and(|v| v == "1");
        match LocalRedis::start(extra) {
            Ok(r) => Some(r),
            Err(e) if !required => {
                eprintln!(
                    "skipping: no usable redis-server ({e}); install redis-server to run this test"
                );
                None
            }
            Err(e) => panic!("CAKE_REQUIRE_REDIS=1 but redis-server cannot start: {e}"),
        }
    }

    /// `redis-server` from `CAKE_REDIS_SERVER` or the `PATH`, if any.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("CAKE_REDIS_SERVER") {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
    }

    /// Starts a server with `extra` arguments (e.g. `--maxmemory 1mb`) and
    /// waits until it answers `PING`.
    pub fn start(extra: &[&str]) -> io::Result<LocalRedis> {
        let binary = Self::binary().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "redis-server not found on PATH")
        })?;
        let mut last = None;
        // A free port can be taken between choosing it and binding it.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut r = LocalRedis {
                binary: binary.clone(),
                port,
                args: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            match r.restart() {
                Ok(()) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server on the same port with the same arguments.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "redis-server exited at start: {status}"
                )));
            }
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "redis-server did not answer PING",
        ))
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throw-away Redis Cluster on loopback, for tests and benchmarks:
/// `masters` masters with `replicas` replicas each, every node a
/// [`LocalRedis`] with `--cluster-enabled yes` and a short node timeout (a
/// killed master's replica takes over within a few seconds), joined with
/// `redis-cli --cluster create`. Every node is killed on drop.
#[derive(Debug)]
pub struct LocalRedisCluster {
    nodes: Vec<LocalRedis>,
    dir: PathBuf,
}

/// How long a node may be unreachable before its replica takes over.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

impl LocalRedisCluster {
    /// For tests: like [`LocalRedis::for_test`], a started cluster or
    /// `None` with the reason, unless `CAKE_REQUIRE_REDIS=1`.
    pub fn for_test(masters: usize, replicas: usize) -> Option<LocalRedisCluster> {
        let required = std::env::var("CAKE_REQUIRE_REDIS").is_ok_and(|v| v == "1");
        match LocalRedisCluster::start(masters, replicas) {
            Ok(c) => Some(c),
            Err(e) if !required => {
                eprintln!(
                    "skipping: no usable redis cluster ({e}); install redis-server (with redis-cli) to run this test"
                );
                None
            }
            Err(e) => panic!("CAKE_REQUIRE_REDIS=1 but a redis cluster cannot start: {e}"),
        }
    }

    pub fn start(masters: usize, replicas: usize) -> io::Result<LocalRedisCluster> {
        let cli = redis_cli().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "redis-cli not found beside redis-server or on PATH",
            )
        })?;
        let dir = std::env::temp_dir().join(format!(
            "cake-redis-cluster-{}-{}",
            std::process::id(),
            CLUSTER_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut cluster = LocalRedisCluster {
            nodes: Vec::new(),
            dir,
        };
        let timeout = CLUSTER_NODE_TIMEOUT_MS.to_string();
        for i in 0..masters * (1 + replicas) {
            let node_dir = cluster.dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let node_dir = node_dir.to_string_lossy().into_owned();
            cluster.nodes.push(LocalRedis::start(&[
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                &timeout,
                // A replica syncs at once (no wait for others to join the
                // transfer) and may take over however long its master
                // has been gone.
                "--repl-diskless-sync-delay",
                "0",
                "--cluster-replica-validity-factor",
                "0",
                "--dir",
                &node_dir,
            ])?);
        }
        let out = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port())),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        cluster.wait_ok(Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(LocalRedis::url).collect()
    }

    /// Ports of the nodes still running.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(LocalRedis::port)
            .collect()
    }

    /// Ports of the running nodes that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|&p| command(p, &["ROLE"]).is_ok_and(|r| text(&r) == "master"))
            .collect()
    }

    /// The port of the master serving hash `slot`, as a running node sees
    /// it.
    pub fn master_of_slot(&self, slot: u16) -> Option<u16> {
        let port = *self.ports().first()?;
        let reply = command(port, &["CLUSTER", "SLOTS"]).ok()?;
        super::redis_link::slot_ranges(&reply)
            .into_iter()
            .find(|r| r.0 <= slot && slot <= r.1)
            .map(|r| r.2)
    }

    /// Moves all but `keep` of the hash slots (and their keys) of the
    /// master on `from` to the master on `to`, as an operator resharding
    /// would (`redis-cli --cluster reshard`). A master left with no slot
    /// no longer votes in failovers.
    pub fn move_slots(&self, from: u16, to: u16, keep: usize) -> io::Result<()> {
        let map = command(from, &["CLUSTER", "SLOTS"])?;
        let slots = super::redis_link::slot_ranges(&map)
            .iter()
            .filter(|r| r.2 == from)
            .map(|r| usize::from(r.1 - r.0) + 1)
            .sum::<usize>()
            .saturating_sub(keep);
        let id = |port| command(port, &["CLUSTER", "MYID"]).map(|v| text(&v));
        let (from_id, to_id) = (id(from)?, id(to)?);
        let cli = redis_cli()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "redis-cli not found"))?;
        let out = Command::new(cli)
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster reshard failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        self.wait_ok(Duration::from_secs(20))
    }

    /// Keys each running master holds (`DBSIZE`, asked of the masters
    /// themselves), as `(port, keys)`.
    pub fn keys_per_master(&self) -> Vec<(u16, i64)> {
        self.masters()
            .into_iter()
            .map(|port| {
                let n = match command(port, &["DBSIZE"]) {
                    Ok(redis::Value::Int(n)) => n,
                    _ => 0,
                };
                (port, n)
            })
            .collect()
    }

    /// Kills the node on `port` at once (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port() == port) {
            n.kill();
        }
    }

    /// Waits until every running node says `cluster_state:ok`, every slot
    /// is served by a running master and every replica is in sync with its
    /// master.
    pub fn wait_ok(&self, within: Duration) -> io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let ports = self.ports();
            let ok = ports.iter().all(|&p| {
                command(p, &["CLUSTER", "INFO"])
                    .is_ok_and(|i| text(&i).contains("cluster_state:ok"))
            }) && command(ports[0], &["CLUSTER", "SLOTS"]).is_ok_and(|s| {
                // Every master in the map is one that runs.
                let ranges = super::redis_link::slot_ranges(&s);
                !ranges.is_empty() && ranges.iter().all(|r| ports.contains(&r.2))
            }) && ports.iter().all(|&p| {
                command(p, &["INFO", "replication"]).is_ok_and(|i| {
                    let i = text(&i);
                    i.contains("role:master") || i.contains("master_link_status:up")
                })
            });
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "redis cluster did not reach cluster_state:ok",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

static CLUSTER_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for LocalRedisCluster {
    fn drop(&mut self) {
        self.nodes.iter_mut().for_each(LocalRedis::kill);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli` beside the `redis-server` in use, or on the `PATH`.
fn redis_cli() -> Option<PathBuf> {
    let beside = LocalRedis::binary()?.with_file_name("redis-cli");
    if beside.is_file() {
        return Some(beside);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-cli"))
        .find(|p| p.is_file())
}

/// One command to the server on `port`.
fn command(port: u16, args: &[&str]) -> io::Result<redis::Value> {
    let fail = |e: redis::RedisError| io::Error::other(e.to_string());
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(fail)?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .map_err(fail)?;
    let mut cmd = redis::cmd(args[0]);
    args[1..].iter().for_each(|a| {
        cmd.arg(*a);
    });
    cmd.query(&mut conn).map_err(fail)
}

/// A text reply (`CLUSTER INFO`) or the first element of an array reply
/// (`ROLE`), as text.
fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) | redis::Value::VerbatimString { text: s, .. } => s.clone(),
        redis::Value::Array(a) => a.first().map(text).unwrap_or_default(),
        _ => String::new(),
    }
}
