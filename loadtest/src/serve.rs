//! Compare mode's servers: start a server command for a config file on a
//! free loopback port, wait for `GET /health`, stop it after the run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::client::{self, Http};

/// The default server command.
pub const DEFAULT_SERVE_CMD: &str = "cake serve --config {config} --listen {addr}";

/// A server started by the tool.
#[derive(Debug)]
pub struct Served {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The command template is empty or the config is missing.
    #[error("{0}")]
    Setup(String),
    /// Spawning failed.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server exited or never became healthy.
    #[error("{message}; its output is in {}", log.display())]
    NotHealthy {
        /// What happened.
        message: String,
        /// The log file.
        log: PathBuf,
    },
}

/// The template's words with `{config}`, `{addr}` and `{port}` replaced.
/// Split on whitespace, no shell: paths with spaces are not supported.
pub fn command_line(template: &str, config: &Path, addr: &str, port: u16) -> Vec<String> {
    template
        .split_whitespace()
        .map(|w| {
            w.replace("{config}", &config.display().to_string())
                .replace("{addr}", addr)
                .replace("{port}", &port.to_string())
        })
        .collect()
}

fn free_port() -> Result<u16, ServeError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ServeError::Setup(format!("cannot find a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| ServeError::Setup(format!("cannot find a free port: {e}")))
}

impl Served {
    /// Starts the command for `config` and waits until `/health` answers 200
    /// (at most `startup`). Its output goes to a log file in `log_dir`.
    pub async fn start(
        template: &str,
        config: &Path,
        startup: Duration,
        log_dir: &Path,
    ) -> Result<Served, ServeError> {
        if !config.exists() {
            return Err(ServeError::Setup(format!(
                "config {} not found",
                config.display()
            )));
        }
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let argv = command_line(template, config, &addr, port);
        let Some((program, args)) = argv.split_first() else {
            return Err(ServeError::Setup("--serve-cmd is empty".into()));
        };
        let stem = config
            .file_stem()
            .map_or_else(|| "server".into(), |s| s.to_string_lossy());
        let log = log_dir.join(format!("cake-loadtest-{stem}-{port}.log"));
        let open = |p: &Path| {
            std::fs::File::create(p)
                .map_err(|e| ServeError::Setup(format!("cannot create {}: {e}", p.display())))
        };
        let out = open(&log)?;
        let err = out
            .try_clone()
            .map_err(|e| ServeError::Setup(format!("cannot open {}: {e}", log.display())))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ServeError::Spawn {
                program: program.clone(),
                source,
            })?;
        let mut served = Served {
            child,
            base: format!("http://{addr}"),
            log,
        };
        served
            .wait_healthy(startup, &client::http_client(2))
            .await?;
        Ok(served)
    }

    async fn wait_healthy(&mut self, startup: Duration, http: &Http) -> Result<(), ServeError> {
        let deadline = Instant::now() + startup;
        let not_healthy = |message: String, log: &Path| ServeError::NotHealthy {
            message,
            log: log.to_path_buf(),
        };
        let uri = client::join(&self.base, "/health").map_err(ServeError::Setup)?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(not_healthy(
                    format!("the server exited early ({status})"),
                    &self.log,
                ));
            }
            if let Ok((s, _)) = client::get(http, uri.clone(), Duration::from_secs(2)).await
                && s.is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.start_kill();
        Err(not_healthy(
            format!(
                "{} did not answer GET /health within {startup:?}",
                self.base
            ),
            &self.log,
        ))
    }

    /// Stops the server: SIGTERM (through `kill`), then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_fills_placeholders() {
        let argv = command_line(DEFAULT_SERVE_CMD, Path::new("a/b.toml"), "127.0.0.1:9", 9);
        assert_eq!(
            argv,
            [
                "cake",
                "serve",
                "--config",
                "a/b.toml",
                "--listen",
                "127.0.0.1:9"
            ]
        );
    }
}
