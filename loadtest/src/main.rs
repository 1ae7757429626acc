//! `cake-loadtest`: open-loop load testing of OpenAI-compatible servers.
//! See `loadtest/README.md` for usage and the workload file reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cake_loadtest::{
    DEFAULT_SERVE_CMD, Endpoint, NoopOptions, Plan, RunSpec, RunSummary, Served, Workload,
    render_table, run, serve_noop, summarize, write_json, write_plot,
};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cake-loadtest",
    version,
    about = "Open-loop load tester for OpenAI-compatible servers",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a stub OpenAI-compatible API that answers at once: a target for
    /// measuring the load tester itself, not a model.
    NoopServer(NoopArgs),
}

#[derive(Args)]
struct NoopArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Most tokens streamed per request (`max_tokens` caps it further).
    #[arg(long, default_value_t = 16)]
    max_output: u32,
    /// Milliseconds to hold each completion before answering (default 0).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Exit after this many seconds (default: run until interrupted).
    #[arg(long, value_parser = parse_secs)]
    exit_after: Option<f64>,
}

#[derive(Args)]
struct RunArgs {
    /// Server to load: `http://host:port` or `NAME=http://host:port`.
    /// Repeat to compare several servers with the same workload.
    #[arg(long = "target", value_name = "URL")]
    targets: Vec<String>,
    /// Start a server for this config file (see --serve-cmd), run the
    /// workload against it, stop it; repeat to compare configs.
    #[arg(long = "serve-config", value_name = "FILE")]
    serve_configs: Vec<PathBuf>,
    /// Command that starts a server; `{config}`, `{addr}` and `{port}` are
    /// replaced. Split on whitespace, run without a shell.
    #[arg(long, default_value = DEFAULT_SERVE_CMD)]
    serve_cmd: String,
    /// Seconds to wait for a started server's `GET /health`.
    #[arg(long, default_value_t = 120.0)]
    startup_timeout: f64,
    /// Workload file (TOML), e.g. config/workloads/mixed.toml.
    #[arg(long, value_name = "FILE")]
    workload: Option<PathBuf>,
    /// Requests per second (overrides `arrival.rate`; a ramp's `end_rate`).
    #[arg(long)]
    rate: Option<f64>,
    /// Schedule length: `30`, `30s`, `2m`, `500ms` (overrides `duration_s`).
    #[arg(long, value_parser = parse_secs)]
    duration: Option<f64>,
    /// Which endpoint to call.
    #[arg(long, value_enum, default_value = "completions")]
    endpoint: Endpoint,
    /// Model name to send (default: the first id from `GET /v1/models`,
    /// else `default`).
    #[arg(long)]
    model: Option<String>,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an SVG plot (TTFT CDF and goodput per run).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (30, 30s, 2m, 500ms)"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v * scale)
    } else {
        Err(format!("{s:?}: a duration must be > 0"))
    }
}

fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = threads {
        b.worker_threads(t.max(1));
    }
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::NoopServer(a)) => runtime(Some(a.threads))?.block_on(noop(a)),
        None => {
            let threads = cli.run.threads;
            runtime(threads)?.block_on(load(cli.run))
        }
    }
}

async fn noop(a: NoopArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "noop server (a measurement target, not a model) on http://{addr}; max_output {}, delay {} ms",
        a.max_output, a.delay_ms
    );
    let opts = NoopOptions {
        max_output: a.max_output,
        delay: Duration::from_millis(a.delay_ms),
    };
    let stop = async {
        match a.exit_after {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::select! {
        r = serve_noop(listener, opts) => r.context("noop server failed"),
        () = stop => Ok(()),
    }
}

fn target_name(t: &str) -> (String, String) {
    match t.split_once('=') {
        Some((name, url)) if !name.contains("://") => (name.to_string(), url.to_string()),
        _ => (t.trim_start_matches("http://").to_string(), t.to_string()),
    }
}

async fn load(a: RunArgs) -> Result<()> {
    let Some(path) = &a.workload else {
        bail!("--workload FILE is required (see config/workloads/)");
    };
    if a.targets.is_empty() && a.serve_configs.is_empty() {
        bail!("give --target URL (repeatable) or --serve-config FILE (repeatable)");
    }
    let w = Workload::load(path)?.with_overrides(a.rate, a.duration)?;
    let plan = Arc::new(Plan::build(&w));
    // Closed loops make one item stand for several requests: report those.
    eprintln!(
        "workload {:?}: {} requests over {:.1} s ({:.1} req/s offered), seed {}",
        w.name,
        plan.requests,
        w.duration_s,
        plan.requests as f64 / w.duration_s,
        w.seed
    );
    let spec = |name: String, target: String| RunSpec {
        name,
        target,
        endpoint: a.endpoint,
        model: a.model.clone(),
        progress: !a.quiet,
    };
    let mut summaries: Vec<RunSummary> = Vec::new();
    let mut failures = Vec::new();
    for t in &a.targets {
        let (name, url) = target_name(t);
        let result = run(&w, Arc::clone(&plan), &spec(name, url)).await?;
        summaries.push(summarize(&result));
    }
    let log_dir = std::env::temp_dir();
    for cfg in &a.serve_configs {
        let name = cfg.file_stem().map_or_else(
            || cfg.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        let startup = Duration::from_secs_f64(a.startup_timeout.max(0.1));
        let served = match Served::start(&a.serve_cmd, cfg, startup, &log_dir).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{name}: {e}");
                failures.push(name);
                continue;
            }
        };
        eprintln!(
            "{name}: serving on {} (log {})",
            served.base,
            served.log.display()
        );
        let result = run(&w, Arc::clone(&plan), &spec(name, served.base.clone())).await;
        served.stop().await;
        summaries.push(summarize(&result?));
    }

    print!("{}", render_table(&summaries));
    if let Some(p) = &a.json {
        write_json(p, &summaries)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.plot {
        write_plot(p, &summaries)?;
        eprintln!("wrote {}", p.display());
    }
    if !failures.is_empty() {
        bail!("servers that did not start: {}", failures.join(", "));
    }
    Ok(())
}
