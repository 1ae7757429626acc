//! A throw-away `redis-server` on a free loopback port, for tests and for
//! `cake bench store --tier redis` without `--redis-url`. Nothing is
//! persisted (`--save '' --appendonly no`); the server is killed on drop.

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
