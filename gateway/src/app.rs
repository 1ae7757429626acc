//! Putting a gateway or a worker together from a [`Config`]: the model's
//! tokenizer and shape, the workers (embedded engines share one model and
//! one KV store), the pool and its health checks, the listener.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cake_engine::worker::{Engine, EngineConfig};
use cake_engine::{Device, Model, Tokenizer};
use tokio::net::TcpListener;

use crate::admission::Admission;
use crate::config::{Config, PolicyConfig, ServerConfig, TenantConfig, WorkerKind};
use crate::http::{DrainReport, DrainSignal, ServerHandle, gateway_cutoff, serve};
use crate::stack::{AppState, ModelInfo, build};
use crate::worker::{CakeWorker, EmbeddedWorker, OpenAiWorker, Worker, WorkerPool, WorkerSlot};

/// Why a gateway or worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("model {path}: {reason}")]
    Model { path: String, reason: String },
    #[error("engine: {0}")]
    Engine(#[from] cake_engine::EngineError),
    #[error("kv store: {0}")]
    Kv(#[from] cake_engine::kv::KvError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

fn model_err(dir: &Path, reason: impl ToString) -> StartError {
    StartError::Model {
        path: dir.display().to_string(),
        reason: reason.to_string(),
    }
}

/// What the gateway needs to know of the model in `dir` (a checkpoint
/// folder or a GGUF file): its tokenizer, context length and vocabulary
/// size (from `config.json` or the GGUF metadata, unless `[model]
/// max_context` says otherwise).
pub fn model_info(cfg: &Config, dir: &Path) -> Result<ModelInfo, StartError> {
    let tokenizer = Tokenizer::load(dir).map_err(|e| model_err(dir, e))?;
    if cake_engine::gguf::is_gguf(dir) {
        let file = cake_engine::gguf::GgufFile::open(dir).map_err(|e| model_err(dir, e))?;
        let mc = cake_engine::gguf::config(&file).map_err(|e| model_err(dir, e))?;
        let max_context = match cfg.model.max_context {
            0 => mc.max_position_embeddings,
            n => n,
        };
        return Ok(ModelInfo::new(
            &cfg.model.served_name(),
            tokenizer,
            max_context,
            mc.vocab_size,
        ));
    }
    let text = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| model_err(dir, format!("config.json: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| model_err(dir, format!("config.json: {e}")))?;
    let num = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
    let max_context = match cfg.model.max_context {
        0 => num("max_position_embeddings")
            .ok_or_else(|| model_err(dir, "config.json has no max_position_embeddings"))?,
        n => n,
    };
    let vocab_size = num("vocab_size").unwrap_or_else(|| tokenizer.vocab_size());
    Ok(ModelInfo::new(
        &cfg.model.served_name(),
        tokenizer,
        max_context,
        vocab_size,
    ))
}

/// The device `engine.device` names, probed: a GPU that cannot be used
/// (no driver, no GPU, a build without `cuda`) is logged with the reason
/// and the CPU backend serves instead. A spelling no build knows is an
/// error.
pub fn pick_device(spec: &str) -> Result<Device, String> {
    let wants_gpu = spec.trim().starts_with("cuda");
    match Device::probe(spec) {
        Ok(d) => {
            tracing::info!(device = %d.describe(), "compute device");
            Ok(d)
        }
        Err(e) if wants_gpu => {
            tracing::warn!(device = spec, reason = %e, "GPU unavailable; serving on the CPU backend");
            Ok(Device::Cpu)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The engines of `cfg`'s embedded workers (one model, one store, shared)
/// or, with `only`, one engine named after `[engine] name`.
pub fn start_engines(
    cfg: &Config,
    dir: &Path,
    names: &[String],
) -> Result<Vec<Engine>, StartError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let device = pick_device(&cfg.engine.device)
        .map_err(|e| model_err(dir, format!("engine.device = {:?}: {e}", cfg.engine.device)))?;
    tracing::info!(model = %dir.display(), "loading the model");
    let model = Arc::new(Model::load_with(dir, device, cfg.engine.weights)?);
    let tokenizer = Arc::new(Tokenizer::load(dir)?);
    let store = cake_engine::kv::build_store(&cfg.kv, &cfg.data_dir())?;
    names
        .iter()
        .map(|name| {
            let ec = EngineConfig {
                name: name.clone(),
                ..cfg.engine_config()
            };
            Ok(Engine::start(
                model.clone(),
                tokenizer.clone(),
                Some(store.clone()),
                ec,
            )?)
        })
        .collect()
}

/// Every configured worker, reachable (embedded engines started).
pub fn build_workers(cfg: &Config, dir: &Path) -> Result<Vec<WorkerSlot>, StartError> {
    let workers = cfg.effective_workers();
    let embedded: Vec<String> = workers
        .iter()
        .filter(|w| w.kind == WorkerKind::Embedded)
        .map(|w| w.name.clone())
        .collect();
    let mut engines = start_engines(cfg, dir, &embedded)?.into_iter();
    let served = cfg.model.served_name();
    let mut slots = Vec::new();
    for w in &workers {
        let timeout = Duration::from_millis(w.timeout_ms);
        let worker: Arc<dyn Worker> = match w.kind {
            WorkerKind::Embedded => match engines.next() {
                Some(e) => Arc::new(EmbeddedWorker::new(e)),
                None => continue,
            },
            WorkerKind::Cake => Arc::new(CakeWorker::new(&w.name, &w.url, timeout)),
            WorkerKind::Openai => {
                let model = if w.upstream_model.is_empty() {
                    &served
                } else {
                    &w.upstream_model
                };
                Arc::new(OpenAiWorker::new(
                    &w.name, &w.url, model, &w.api_key, timeout,
                ))
            }
        };
        slots.push(WorkerSlot::new(
            worker,
            timeout,
            Duration::from_millis(w.idle_timeout_ms),
        ));
    }
    Ok(slots)
}

/// A running gateway.
pub struct Gateway {
    handle: ServerHandle,
    pool: Arc<WorkerPool>,
    admission: Arc<Admission>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How often the admission queue is served even when nothing finishes
/// (deadlines, workers coming back).
const PUMP_EVERY: Duration = Duration::from_millis(50);

impl Gateway {
    /// Serves on `listener` with these workers, everyone the `default`
    /// tenant. Call inside a runtime.
    pub fn start(
        server: &ServerConfig,
        policy: &PolicyConfig,
        model: ModelInfo,
        slots: Vec<WorkerSlot>,
        listener: TcpListener,
    ) -> Result<Gateway, StartError> {
        Gateway::start_with_tenants(server, policy, &[], model, slots, listener)
    }

    /// Serves on `listener` with these workers and tenants (validated).
    pub fn start_with_tenants(
        server: &ServerConfig,
        policy: &PolicyConfig,
        tenants: &[TenantConfig],
        model: ModelInfo,
        slots: Vec<WorkerSlot>,
        listener: TcpListener,
    ) -> Result<Gateway, StartError> {
        crate::telemetry::install();
        let pool = Arc::new(WorkerPool::new(slots, server.down_after_failures));
        for s in pool.slots() {
            crate::telemetry::worker_up(s.name(), true);
        }
        let workers: Vec<&str> = pool.slots().iter().map(|s| s.name()).collect();
        let mut names: Vec<&str> = tenants.iter().map(|t| t.name.as_str()).collect();
        if names.is_empty() {
            names.push("default");
        }
        crate::telemetry::register_names(&workers, &names);
        let health = pool.spawn_health_checks(Duration::from_millis(server.health_interval_ms));
        let admission = Arc::new(Admission::new(policy, tenants, pool.clone()));
        let pump = admission.spawn_pump(PUMP_EVERY);
        let signal = DrainSignal::new();
        let state = Arc::new(AppState {
            server: server.clone(),
            model: Arc::new(model),
            pool: pool.clone(),
            admission: admission.clone(),
            drain: signal.state(),
        });
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let handle = serve(
            listener,
            build(state),
            Duration::from_millis(server.read_timeout_ms),
            signal,
            gateway_cutoff(),
        )
        .map_err(|source| StartError::Listen { addr, source })?;
        Ok(Gateway {
            handle,
            pool,
            admission,
            tasks: vec![health, pump],
        })
    }

    /// Reloads `[[tenants]]` and `[policy]` from `path` when it changes
    /// (checked every `every`) and on SIGHUP; a file that does not parse
    /// or validate keeps the config in force, with a warning.
    pub fn watch_config(&mut self, path: std::path::PathBuf, every: Duration) {
        let t = crate::admission::watch(&self.admission, path, every);
        self.tasks.push(t);
    }

    /// Puts a validated config's tenants and policy in force now.
    pub fn apply_config(&self, cfg: &Config) {
        self.admission.apply(cfg);
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.handle.local_addr()
    }

    pub fn pool(&self) -> &Arc<WorkerPool> {
        &self.pool
    }

    /// Requests being sent to the pool's worker `i` now (what `/health`
    /// shows as its `in_flight`).
    pub fn in_flight(&self, i: usize) -> u64 {
        self.admission.in_flight(i)
    }

    /// Stops accepting; requests in flight finish.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.handle.shutdown().await;
    }

    /// The graceful end (SIGTERM, SIGINT): stops accepting, lets
    /// requests in flight finish for up to `timeout`, ends the rest with
    /// an error (see [`ServerHandle::drain`]), then waits, within what is
    /// left of `timeout`, for the embedded workers' KV write-behind.
    pub async fn drain(self, timeout: Duration) -> DrainReport {
        let started = tokio::time::Instant::now();
        let report = self.handle.drain(timeout).await;
        let left = timeout.saturating_sub(started.elapsed());
        flush_workers(&self.pool, left).await;
        for t in &self.tasks {
            t.abort();
        }
        report
    }

    /// Runs until the process ends.
    pub async fn wait(self) {
        self.handle.wait().await;
    }
}

/// Waits for every worker's write-behind, for at most `within`.
pub async fn flush_workers(pool: &WorkerPool, within: Duration) {
    let all = futures::future::join_all(pool.slots().iter().map(|s| s.worker.flush()));
    if tokio::time::timeout(within, all).await.is_err() {
        tracing::warn!(
            within_ms = within.as_millis() as u64,
            "KV write-behind not flushed within the drain deadline; unwritten chunks are dropped"
        );
    }
}

/// Binds `addr`.
pub async fn listen(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: addr.to_string(),
            source,
        })
}
