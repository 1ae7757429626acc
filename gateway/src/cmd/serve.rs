//! `cake serve`, `cake worker` and `cake config check`: parse arguments,
//! load the config, put the parts together (`cake_gateway::app`), run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cake_engine::WeightsDtype;
use cake_gateway::Config;
use cake_gateway::worker::{EmbeddedWorker, Worker, serve_worker};
use clap::{Args, Subcommand};

/// `cake serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Config file (default: built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `server.listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Data folder: synthetic models and the disk KV cache (overrides
    /// `server.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Checkpoint folder or GGUF file to serve (overrides `model.path`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// How the matmul weights are held: auto, f32 or bf16 (overrides
    /// `engine.weights`).
    #[arg(long)]
    weights: Option<WeightsDtype>,
}

/// `cake worker`.
#[derive(Args)]
pub struct WorkerArgs {
    /// Config file (its `[model]`, `[engine]`, `[kv]` and `[server]`
    /// sections are used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `server.worker_listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Data folder (overrides `server.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Checkpoint folder or GGUF file to serve (overrides `model.path`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// How the matmul weights are held: auto, f32 or bf16 (overrides
    /// `engine.weights`).
    #[arg(long)]
    weights: Option<WeightsDtype>,
    /// Worker name in usage, metrics and logs (overrides `engine.name`),
    /// so several workers can share one config file.
    #[arg(long)]
    name: Option<String>,
}

/// `cake config ...`.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate a config file without starting anything.
    Check {
        /// The file.
        file: PathBuf,
    },
}

fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

/// The checkpoint folder: `model.path`, or the synthetic preset created
/// under the data folder on first start (with the `tools` feature).
fn model_dir(cfg: &Config) -> anyhow::Result<PathBuf> {
    if !cfg.model.path.as_os_str().is_empty() {
        return Ok(cfg.model.path.clone());
    }
    preset_dir(cfg)
}

#[cfg(feature = "tools")]
fn preset_dir(cfg: &Config) -> anyhow::Result<PathBuf> {
    super::model_dir::ensure_preset(&cfg.model.preset, cfg.model.seed, &cfg.data_dir())
}

/// Unreachable after `Config::validate`, which asks for `model.path` in a
/// build without the tools; said again here in case.
#[cfg(not(feature = "tools"))]
fn preset_dir(cfg: &Config) -> anyhow::Result<PathBuf> {
    anyhow::bail!(
        "model.path is empty and this build has no `tools` feature to create preset `{}`",
        cfg.model.preset
    )
}

fn apply(
    cfg: &mut Config,
    data_dir: Option<PathBuf>,
    model: Option<PathBuf>,
    weights: Option<WeightsDtype>,
) -> anyhow::Result<()> {
    if let Some(w) = weights {
        cfg.engine.weights = w;
    }
    if let Some(d) = data_dir {
        cfg.server.data_dir = d;
    }
    if let Some(m) = model {
        cfg.model.path = m;
    }
    cfg.validate()?;
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on SIGTERM or SIGINT (the first one: a second signal during
/// the drain is not waited for, so it ends the process the default way
/// only if the drain hangs — it does not, it is bounded).
async fn until_shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM/SIGINT; stop the process by other means");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = load(args.config.as_deref())?;
    let config_path = args.config.clone();
    if let Some(l) = args.listen {
        cfg.server.listen = l;
    }
    apply(&mut cfg, args.data_dir, args.model, args.weights)?;
    let dir = model_dir(&cfg)?;
    runtime()?.block_on(async move {
        // Before the stores open: what they record at start (the disk
        // store's capacity and bytes) must reach /metrics.
        cake_gateway::install_metrics();
        let info = cake_gateway::model_info(&cfg, &dir)?;
        let slots = cake_gateway::build_workers(&cfg, &dir)?;
        let listener = cake_gateway::listen(&cfg.server.listen).await?;
        let mut gw = cake_gateway::Gateway::start_with_tenants(
            &cfg.server,
            &cfg.policy,
            &cfg.tenants,
            info,
            slots,
            listener,
        )?;
        if let Some(path) = config_path {
            // Tenants and policy follow the file (and SIGHUP).
            gw.watch_config(path, Duration::from_secs(1));
        }
        tracing::info!(
            listen = %gw.local_addr(),
            model = %cfg.model.served_name(),
            workers = gw.pool().slots().len(),
            "cake gateway serving (OpenAI API under /v1)"
        );
        let drain = Duration::from_millis(cfg.server.drain_timeout_ms);
        let sig = until_shutdown_signal().await;
        tracing::info!(
            signal = sig,
            drain_timeout_ms = cfg.server.drain_timeout_ms,
            "draining: no new connections; requests in flight finish"
        );
        let report = gw.drain(drain).await;
        tracing::info!(
            cut_connections = report.cut_connections,
            left_open = report.left_open,
            "drained; exiting"
        );
        Ok(())
    })
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut cfg = load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        cfg.server.worker_listen = l;
    }
    if let Some(n) = args.name {
        anyhow::ensure!(!n.trim().is_empty(), "--name must not be empty");
        cfg.engine.name = n;
    }
    apply(&mut cfg, args.data_dir, args.model, args.weights)?;
    let dir = model_dir(&cfg)?;
    runtime()?.block_on(async move {
        cake_gateway::install_metrics();
        let name = cfg.engine.name.clone();
        let engine = cake_gateway::start_engines(&cfg, &dir, &[name])?
            .pop()
            .context("no engine started")?;
        let worker: Arc<dyn Worker> = Arc::new(EmbeddedWorker::new(engine));
        let listener = cake_gateway::listen(&cfg.server.worker_listen).await?;
        let read_timeout = Duration::from_millis(cfg.server.read_timeout_ms);
        let handle = serve_worker(listener, worker.clone(), read_timeout)?;
        tracing::info!(listen = %handle.local_addr(), worker = %cfg.engine.name, "cake worker serving");
        let drain = Duration::from_millis(cfg.server.drain_timeout_ms);
        let sig = until_shutdown_signal().await;
        tracing::info!(signal = sig, drain_timeout_ms = cfg.server.drain_timeout_ms, "draining: no new connections; requests in flight finish");
        let started = tokio::time::Instant::now();
        let report = handle.drain(drain).await;
        let left = drain.saturating_sub(started.elapsed());
        if tokio::time::timeout(left, worker.flush()).await.is_err() {
            tracing::warn!("KV write-behind not flushed within the drain deadline; unwritten chunks are dropped");
        }
        tracing::info!(cut_connections = report.cut_connections, left_open = report.left_open, "drained; exiting");
        Ok(())
    })
}

pub fn config(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check { file } => {
            let cfg = Config::load(&file)?;
            println!(
                "{}: ok ({} worker(s), {} tenant(s), model {})",
                file.display(),
                cfg.effective_workers().len(),
                cfg.tenants.len(),
                cfg.model.served_name()
            );
            Ok(())
        }
    }
}
