//! `cake bench gateway`: the latency the gateway adds in front of a no-op
//! worker, and the requests/s it sustains, measured in one run against
//! calling the worker directly.
//!
//! In one process: a [`MockWorker`] answering one token at once, served
//! over HTTP as a `cake worker`; a gateway with that worker as its one
//! remote worker. Each target gets the same open-loop load (a request
//! every `1/rate` seconds, whether or not earlier ones finished) and
//! latencies go into a histogram; then a closed loop of `concurrency`
//! clients measures the most requests/s. With `--nginx URL` (an nginx
//! `proxy_pass` to `--worker-listen`) the same direct request through
//! nginx is measured too, for comparison with a plain reverse proxy.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use cake_engine::worker::{WorkOptions, WorkRequest};
use hdrhistogram::Histogram;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use crate::config::{Config, PolicyConfig, ServerConfig};
use crate::worker::{CakeWorker, MockOptions, MockWorker, Worker, WorkerSlot, serve_worker};
use crate::{Gateway, ModelInfo};

/// `cake bench gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayBenchArgs {
    /// Requests per second of the fixed-rate phase.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of warm-up before each fixed-rate phase (not measured).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Clients of the max-throughput phase.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// Address of the no-op worker (default: a free port), e.g. for nginx
    /// to proxy to.
    #[arg(long)]
    pub worker_listen: Option<String>,
    /// Also measure an nginx `proxy_pass` to the worker at this URL.
    #[arg(long)]
    pub nginx: Option<String>,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What one target did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetResult {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors: u64,
    pub max_rps: f64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Clone)]
struct Target {
    name: &'static str,
    url: String,
    body: Bytes,
}

async fn one(client: &HttpClient, t: &Target) -> Result<(), String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(&t.url)
        .header("content-type", "application/json")
        .body(Full::new(t.body.clone()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let ok = resp.status().is_success();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if ok && !body.to_bytes().is_empty() {
        Ok(())
    } else {
        Err("bad answer".into())
    }
}

/// Open loop at `rate` for `secs`; latencies in µs.
async fn fixed_rate(
    client: &HttpClient,
    t: &Target,
    rate: f64,
    secs: f64,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let hist = Arc::new(parking_lot::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(AtomicU64::new(0));
    let n = (rate * secs).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let (c, t, h, e) = (client.clone(), t.clone(), hist.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            match one(&c, &t).await {
                Ok(()) => {
                    let us = t0.elapsed().as_micros() as u64;
                    let _ = h.lock().record(us.max(1));
                }
                Err(_) => {
                    e.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let h = hist.lock().clone();
    Ok((h, errors.load(Ordering::Relaxed)))
}

/// Closed loop: `clients` each send back to back for `secs`; requests/s.
async fn max_rps(client: &HttpClient, t: &Target, clients: usize, secs: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (c, t, d) = (client.clone(), t.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    if one(&c, &t).await.is_ok() {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// A tokenizer and model shape for the gateway (the no-op worker needs
/// no model): the synthetic byte-level tokenizer.
pub fn synthetic_model(name: &str, vocab: usize, context: usize) -> anyhow::Result<ModelInfo> {
    let (tok, cfg) = cake_engine::init::tokenizer_files(vocab, context)?;
    let tokenizer = cake_engine::Tokenizer::from_json(&tok, Some(&cfg))?;
    Ok(ModelInfo::new(name, tokenizer, context, vocab))
}

async fn measure(
    args: &GatewayBenchArgs,
    client: &HttpClient,
    t: &Target,
) -> anyhow::Result<TargetResult> {
    if args.warmup > 0.0 {
        fixed_rate(client, t, args.rate, args.warmup).await?;
    }
    let (h, errors) = fixed_rate(client, t, args.rate, args.duration).await?;
    let rps = max_rps(client, t, args.concurrency, args.duration).await;
    Ok(TargetResult {
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
        errors,
        max_rps: rps,
    })
}

async fn run_async(args: GatewayBenchArgs) -> anyhow::Result<serde_json::Value> {
    // The engine's default chunk size: prompts shorter than a chunk skip
    // the presence lookup, longer ones pay for it.
    let mock = MockWorker::new(
        "noop",
        MockOptions {
            chunk_tokens: 256,
            ..MockOptions::default()
        },
    );
    let worker_addr = args.worker_listen.as_deref().unwrap_or("127.0.0.1:0");
    let wl = crate::listen(worker_addr).await?;
    let wsrv = serve_worker(
        wl,
        Arc::new(mock) as Arc<dyn Worker>,
        Duration::from_secs(30),
    )?;
    let worker_url = format!("http://{}", wsrv.local_addr());

    let cfg = Config::default();
    let server = ServerConfig {
        health_interval_ms: 1000,
        ..cfg.server.clone()
    };
    let remote = CakeWorker::new("noop", &worker_url, Duration::from_secs(5));
    let slot = WorkerSlot::new(
        Arc::new(remote),
        Duration::from_secs(5),
        Duration::from_secs(30),
    );
    let model = synthetic_model("noop", 512, 4096)?;
    let gl = crate::listen("127.0.0.1:0").await?;
    let gw = Gateway::start(&server, &PolicyConfig::default(), model, vec![slot], gl)?;

    let prompt: Vec<u32> = (0..args.prompt_tokens as u32)
        .map(|i| 10 + i % 200)
        .collect();
    let direct_body = serde_json::to_vec(&WorkRequest {
        id: "bench".into(),
        prompt: prompt.clone(),
        options: WorkOptions {
            max_tokens: 1,
            ..WorkOptions::default()
        },
        cache_group: "default".into(),
        strategy: None,
        priority: 0,
    })?;
    let gateway_body =
        serde_json::to_vec(&json!({"model": "noop", "prompt": prompt, "max_tokens": 1}))?;
    let mut targets = vec![
        Target {
            name: "direct",
            url: format!("{worker_url}/worker/v1/submit"),
            body: Bytes::from(direct_body.clone()),
        },
        Target {
            name: "gateway",
            url: format!("http://{}/v1/completions", gw.local_addr()),
            body: Bytes::from(gateway_body),
        },
    ];
    if let Some(n) = &args.nginx {
        targets.push(Target {
            name: "nginx",
            url: format!("{}/worker/v1/submit", n.trim_end_matches('/')),
            body: Bytes::from(direct_body),
        });
    }
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(conn);
    for t in &targets {
        one(&client, t)
            .await
            .map_err(|e| anyhow::anyhow!("{} ({}) does not answer: {e}", t.name, t.url))?;
    }
    eprintln!(
        "fixed rate {} req/s for {} s (after {} s warm-up), then {} clients back to back for {} s",
        args.rate, args.duration, args.warmup, args.concurrency, args.duration
    );
    let mut out = serde_json::Map::new();
    let mut results = Vec::new();
    for t in &targets {
        let r = measure(&args, &client, t).await?;
        eprintln!(
            "{:8} p50 {:>6} us  p90 {:>6} us  p99 {:>6} us  max {:>7} us  errors {}  max {:>8.0} req/s",
            t.name, r.p50_us, r.p90_us, r.p99_us, r.max_us, r.errors, r.max_rps
        );
        for (k, v) in [
            ("p50_us", json!(r.p50_us)),
            ("p90_us", json!(r.p90_us)),
            ("p99_us", json!(r.p99_us)),
            ("max_us", json!(r.max_us)),
            ("errors", json!(r.errors)),
            ("max_rps", json!(r.max_rps)),
        ] {
            out.insert(format!("{}_{k}", t.name), v);
        }
        results.push((t.name, r));
    }
    let get = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.clone())
    };
    if let (Some(d), Some(g)) = (get("direct"), get("gateway")) {
        let added50 = g.p50_us as i64 - d.p50_us as i64;
        let added99 = g.p99_us as i64 - d.p99_us as i64;
        eprintln!("gateway adds p50 {added50} us, p99 {added99} us");
        out.insert("gateway_added_p50_us".into(), json!(added50));
        out.insert("gateway_added_p99_us".into(), json!(added99));
        if let Some(n) = get("nginx") {
            let n50 = n.p50_us as i64 - d.p50_us as i64;
            let n99 = n.p99_us as i64 - d.p99_us as i64;
            eprintln!("nginx adds   p50 {n50} us, p99 {n99} us");
            out.insert("nginx_added_p50_us".into(), json!(n50));
            out.insert("nginx_added_p99_us".into(), json!(n99));
        }
    }
    out.insert("rate".into(), json!(args.rate));
    out.insert("duration_s".into(), json!(args.duration));
    out.insert("concurrency".into(), json!(args.concurrency));
    out.insert("prompt_tokens".into(), json!(args.prompt_tokens));
    gw.shutdown().await;
    wsrv.shutdown().await;
    Ok(serde_json::Value::Object(out))
}

/// Runs the benchmark (its own runtime) and writes `--json`.
pub fn run(args: GatewayBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    anyhow::ensure!(args.duration > 0.0, "--duration must be above 0");
    let json_path = args.json.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(run_async(args))?;
    if let Some(p) = json_path {
        std::fs::write(&p, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
