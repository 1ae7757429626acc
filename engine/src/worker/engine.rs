//! The embedded worker: the public handle over the scheduler thread and
//! the I/O executor.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::Instant;

use cake_policy::{ChunkCost, simulate_cake};
use tokio::sync::mpsc;

use super::loader::{IoJob, IoOrder, LoadPlan, Source, run_io};
use super::scheduler::{Msg, Scheduler, Shared};
use super::seq::{Phase, Seq, generate_options};
use super::siblings::{ProducerId, Siblings};
use super::{
    Classification, EngineConfig, LoadReport, RequestClass, Strategy, WorkEvent, WorkRequest,
};
use crate::kv::{ChunkContext, ChunkKey, HEADER_LEN, KvStore, Namespace, chunk_keys};
use crate::{Decoding, EngineError, Model, Tokenizer};

/// One model serving many requests. Cheap to clone (shared inside); the
/// scheduler thread ends when the last handle is dropped and its work is
/// done.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    store: Option<Arc<dyn KvStore>>,
    cfg: EngineConfig,
    name: Arc<str>,
    tx: Mutex<Sender<Msg>>,
    shared: Arc<Shared>,
    siblings: Arc<Siblings>,
    /// Serial of the next request (its identity as a sibling producer).
    serial: AtomicU64,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.inner.cfg.name)
            .finish_non_exhaustive()
    }
}

/// A prompt's chunk keys and which of them are stored.
struct Lookup {
    keys: Vec<ChunkKey>,
    stored: Vec<bool>,
    /// Chunks `0..cached_end` may come from the store: up to the last
    /// stored one, never the chunk holding the last prompt token (its
    /// logits must be computed).
    cached_end: usize,
}

impl Engine {
    /// Starts a worker. Must be called inside a tokio runtime (the I/O
    /// executor runs on it); the scheduler gets its own thread.
    pub fn start(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        store: Option<Arc<dyn KvStore>>,
        cfg: EngineConfig,
    ) -> Result<Engine, EngineError> {
        cfg.validate()
            .map_err(|e| EngineError::BadRequest(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            EngineError::Internal("Engine::start must run inside a tokio runtime".into())
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::new());
        let siblings = Arc::new(Siblings::default());
        let chunk_bytes = (cfg
            .codec
            .payload_len(model.layout(), cfg.chunk_tokens)
            .unwrap_or(0)
            + HEADER_LEN) as u64;
        let sched = Scheduler {
            model: model.clone(),
            store: store.clone(),
            cfg: cfg.clone(),
            rx,
            shared: shared.clone(),
            siblings: siblings.clone(),
            runtime: runtime.clone(),
            waiting: Default::default(),
            active: Vec::new(),
            chunk_bytes,
        };
        std::thread::Builder::new()
            .name(format!("cake-sched-{}", cfg.name))
            .spawn(move || sched.run())?;
        Ok(Engine {
            inner: Arc::new(Inner {
                name: cfg.name.as_str().into(),
                model,
                tokenizer,
                store,
                cfg,
                tx: Mutex::new(tx),
                shared,
                siblings,
                serial: AtomicU64::new(1),
                runtime,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    pub fn model(&self) -> &Model {
        &self.inner.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    pub fn store(&self) -> Option<&Arc<dyn KvStore>> {
        self.inner.store.as_ref()
    }

    /// The chunk-key namespace of a cache group on this worker.
    pub fn namespace(&self, cache_group: &str) -> Namespace {
        Namespace::new(
            self.inner.model.fingerprint(),
            self.inner.cfg.chunk_tokens as u32,
            self.inner.cfg.codec,
            cache_group,
        )
    }

    /// Bytes of one stored full chunk.
    pub fn chunk_bytes(&self) -> u64 {
        let c = &self.inner.cfg;
        (c.codec
            .payload_len(self.inner.model.layout(), c.chunk_tokens)
            .unwrap_or(0)
            + HEADER_LEN) as u64
    }

    fn send(&self, m: Msg) {
        let tx = self.inner.tx.lock();
        let _ = tx.send(m);
    }

    /// Queues a request. Events arrive on the returned receiver; dropping
    /// it cancels the request's remaining work.
    pub fn submit(
        &self,
        req: WorkRequest,
    ) -> Result<mpsc::UnboundedReceiver<WorkEvent>, EngineError> {
        let arrival = Instant::now();
        let inner = &self.inner;
        let opts = generate_options(&req, inner.cfg.chunk_tokens);
        opts.sampling.validate()?;
        inner
            .model
            .check_fits(req.prompt.len(), req.options.max_tokens)?;
        let vocab = inner.model.config().vocab_size;
        if let Some(bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::BadRequest(format!(
                "prompt token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let limit = (inner.cfg.max_running + inner.cfg.max_waiting) as u64;
        if inner.shared.running.load(Ordering::Relaxed) >= limit {
            return Err(EngineError::Overloaded(format!(
                "worker {} has {limit} requests running or waiting",
                inner.cfg.name
            )));
        }
        inner.shared.running.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = self.clone();
        inner.runtime.spawn(async move {
            let lookup = engine.lookup(&req.prompt, &req.cache_group).await;
            let seq = engine.plan(req, lookup, tx, arrival, opts);
            engine.send(Msg::New(Box::new(seq)));
        });
        Ok(rx)
    }

    async fn lookup(&self, prompt: &[u32], cache_group: &str) -> Lookup {
        let ns = self.namespace(cache_group);
        let keys = chunk_keys(&ns, prompt);
        let stored: Vec<bool> = match &self.inner.store {
            Some(store) if !keys.is_empty() => store
                .lookup(&keys)
                .await
                .into_iter()
                .map(|t| t.is_some())
                .collect(),
            _ => vec![false; keys.len()],
        };
        let cap = self.cap(prompt.len());
        let cached_end = stored[..cap.min(stored.len())]
            .iter()
            .rposition(|&s| s)
            .map_or(0, |i| i + 1);
        Lookup {
            keys,
            stored,
            cached_end,
        }
    }

    /// Which of the prompt's full chunks are stored (one batched lookup),
    /// and which a request running here is computing now: those count as
    /// cached too, since this request would take them from that sibling.
    pub async fn classify(&self, prompt: &[u32], cache_group: &str) -> Classification {
        let l = self.lookup(prompt, cache_group).await;
        let cap = self.cap(prompt.len()).min(l.keys.len());
        let in_flight = self.inner.siblings.in_flight(&l.keys[..cap]);
        let n = (0..cap).filter(|&i| l.stored[i] || in_flight[i]).count();
        Classification {
            class: Some(if n > 0 {
                RequestClass::Cached
            } else {
                RequestClass::Fresh
            }),
            cached_tokens: n * self.inner.cfg.chunk_tokens,
            stored: l.stored,
            chunk_tokens: self.inner.cfg.chunk_tokens,
        }
    }

    /// Chunks of a prompt of `len` tokens that may come from elsewhere:
    /// never the one holding the last token (its logits are computed).
    fn cap(&self, len: usize) -> usize {
        len.saturating_sub(1) / self.inner.cfg.chunk_tokens
    }

    /// Picks the strategy `auto` stands for: the cheapest of compute-only,
    /// load-only and Cake as the cost model predicts from this worker's
    /// measured rates (Cake until both are measured).
    fn resolve_auto(&self, n: usize) -> Strategy {
        let (a, b) = self.inner.shared.compute.fit();
        let bw = self.inner.shared.io.bandwidth();
        if a <= 0.0 || bw <= 0.0 || n == 0 {
            return Strategy::Cake;
        }
        let cost = ChunkCost {
            a,
            b,
            load: self.chunk_bytes() as f64 / bw,
        };
        let cake = simulate_cake(&cost, n, self.inner.cfg.io_queue_depth).time;
        let (tc, tl) = (cost.compute_time(n), cost.load_time(n));
        if tc < cake && tc <= tl {
            Strategy::Compute
        } else if tl < cake {
            Strategy::Load
        } else {
            Strategy::Cake
        }
    }

    /// Plans a request: its cached range (stored chunks, and chunks a
    /// sibling is computing now), the load plan over it and its I/O job;
    /// it registers as the producer of the chunks only it will compute.
    fn plan(
        &self,
        req: WorkRequest,
        lookup: Lookup,
        tx: mpsc::UnboundedSender<WorkEvent>,
        arrival: Instant,
        opts: crate::GenerateOptions,
    ) -> Seq {
        let inner = &self.inner;
        let c = inner.cfg.chunk_tokens;
        let mut strategy = req.strategy.unwrap_or(inner.cfg.strategy);
        if strategy == Strategy::Auto {
            strategy = self.resolve_auto(lookup.cached_end);
        }
        // Prompt log-probabilities need every prompt token's logits; a
        // compute-only request ignores the store.
        let logprobs = req.options.prompt_logprobs;
        let use_store = !logprobs && inner.store.is_some() && strategy != Strategy::Compute;
        let producer = ProducerId {
            serial: inner.serial.fetch_add(1, Ordering::Relaxed),
            running: Arc::new(AtomicBool::new(true)),
        };
        let cap = self.cap(req.prompt.len()).min(lookup.keys.len());
        let mut produces = Vec::new();
        let mut reg = inner.siblings.planning();
        let mut slots: Vec<Source> = Vec::with_capacity(cap);
        for (i, key) in lookup.keys.iter().enumerate() {
            if lookup.stored[i] {
                // Others load it from the store; this one maybe too.
                if i < cap {
                    slots.push(if use_store {
                        Source::Stored
                    } else {
                        Source::Hole
                    });
                }
                continue;
            }
            match reg.producer(key) {
                Some(running) if i < cap && !logprobs => slots.push(Source::Sibling(running)),
                _ => {
                    reg.produce(*key, i, &producer);
                    produces.push(*key);
                    if i < cap {
                        slots.push(Source::Hole);
                    }
                }
            }
        }
        let has_plan = slots.iter().any(Source::comes_from_elsewhere);
        let mut cached_end = slots
            .iter()
            .rposition(Source::comes_from_elsewhere)
            .map_or(0, |i| i + 1);
        if !use_store {
            // Compute-only still ranks its stored prefix as Cake's compute
            // side, as with the store.
            cached_end = cached_end.max(lookup.cached_end);
        }
        slots.truncate(cached_end);
        let n_stored = slots.iter().filter(|s| matches!(s, Source::Stored)).count();
        let siblings: Vec<usize> = (0..cached_end)
            .filter(|&i| matches!(slots[i], Source::Sibling(_)))
            .collect();
        let class = if lookup.stored[..lookup.cached_end].contains(&true) || !siblings.is_empty() {
            RequestClass::Cached
        } else {
            RequestClass::Fresh
        };
        if logprobs || (n_stored == 0 && siblings.is_empty()) {
            strategy = Strategy::Compute;
        }
        let plan = has_plan.then(|| LoadPlan::from_sources(slots));
        if let Some(p) = &plan {
            for &i in &siblings {
                reg.wait(&lookup.keys[i], p, i);
            }
        }
        drop(reg);
        let ns = self.namespace(&req.cache_group);
        let ctx = inner
            .store
            .as_ref()
            .map(|_| ChunkContext::new(&ns, inner.model.layout()));
        if let (Some(store), Some(ctx), Some(p), true) = (&inner.store, ctx, &plan, n_stored > 0) {
            let chunk_bytes = self.chunk_bytes();
            inner.shared.io.plan(n_stored as u64 * chunk_bytes);
            let engine = self.clone();
            let mut job = IoJob {
                plan: p.clone(),
                store: store.clone(),
                keys: lookup.keys[..cached_end].to_vec(),
                ctx,
                order: if strategy == Strategy::Load {
                    IoOrder::FrontToBack
                } else {
                    IoOrder::BackToFront
                },
                depth: inner.cfg.io_queue_depth,
                meter: inner.shared.io.clone(),
                chunk_bytes,
                planned_chunks: n_stored as u64,
                wake: Arc::new(move || engine.send(Msg::Wake)),
                primed: Vec::new(),
                device: inner.model.device(),
            };
            job.prime();
            inner.runtime.spawn(run_io(job));
        }
        Seq {
            decoding: Decoding::new(&inner.model, &inner.tokenizer, opts),
            events: tx,
            arrival,
            class,
            strategy,
            keys: lookup.keys,
            stored: lookup.stored,
            ns,
            producer,
            produces,
            cached_end,
            plan,
            chunk_tokens: c,
            cache: inner.model.new_cache(),
            front: 0,
            phase: Phase::Prefill,
            logits: Vec::new(),
            loaded_tokens: 0,
            computed_tokens: 0,
            shared_tokens: 0,
            sibling_wait: None,
            ttft: None,
            prompt_logprobs: Vec::new(),
            worker: inner.name.clone(),
            ctx,
            req,
        }
    }

    /// The worker's load, for placement.
    pub fn load_report(&self) -> LoadReport {
        let s = &self.inner.shared;
        let (a, b) = s.compute.fit();
        LoadReport {
            worker: self.inner.cfg.name.clone(),
            queued_compute_tokens: s.queued_compute_tokens.load(Ordering::Relaxed),
            queued_io_bytes: s.io.queued_bytes(),
            running: s.running.load(Ordering::Relaxed),
            compute_a_s: a,
            compute_b_s: b,
            bandwidth_bytes_per_s: s.io.bandwidth(),
            kv_bytes_per_token: self.chunk_bytes() / self.inner.cfg.chunk_tokens as u64,
            chunk_tokens: self.inner.cfg.chunk_tokens as u64,
        }
    }

    /// Tokens used by each recent scheduler step (at most the last 4096).
    pub fn step_history(&self) -> Vec<u32> {
        let s = self.inner.shared.steps.lock();
        s.iter().copied().collect()
    }
}
