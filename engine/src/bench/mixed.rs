//! `cake bench mixed`: the paper's adaptive experiment scaled to this
//! machine. One long prefix-cached request arrives first, then a stream of
//! short fresh ones; all finish sooner when each step's token budget goes
//! to decode and fresh prefill first and Cake's compute side gets what is
//! left (the I/O side loads meanwhile), than first come, first served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::common::{bench_request, fill_store, median, random_prompt, run_request};
use crate::kv::{KvStore, Link, MemoryStore, ThrottledStore};
use crate::worker::{BudgetOrder, Engine, EngineConfig, Strategy};
use crate::{EngineError, Model, Rng, Tokenizer};

#[derive(Debug, Clone)]
pub struct MixedBench {
    /// Tokens of the long cached prompt (the paper: 16K).
    pub cached_tokens: usize,
    /// Fresh requests (the paper: 22) and their prompt lengths' range
    /// (32–448).
    pub fresh: usize,
    pub fresh_min: usize,
    pub fresh_max: usize,
    /// Output tokens per request.
    pub max_tokens: usize,
    /// Storage link, bytes/s; 0 picks the balanced one (loading the cached
    /// prompt takes as long as computing it).
    pub bandwidth: f64,
    pub engine: EngineConfig,
    pub seed: u64,
    /// Runs of each order, alternating which goes first; the medians are
    /// reported (the machine is noisy).
    pub repeat: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderResult {
    pub order: String,
    /// Arrival of the first request to the end of the last.
    pub total_s: f64,
    pub cached_ttft_ms: f64,
    pub cached_loaded_tokens: usize,
    pub fresh_ttft_ms_mean: f64,
    /// Mean share of the token budget used per step.
    pub budget_fill: f64,
    pub steps: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MixedReport {
    /// Median total time of each order over the runs.
    pub fcfs_s: f64,
    pub adaptive_s: f64,
    /// `fcfs_s / adaptive_s`: the throughput gain of the adaptive order.
    pub speedup: f64,
    /// The same ratio within each back-to-back pair of runs.
    pub pair_speedups: Vec<f64>,
    pub bandwidth_bytes_per_s: f64,
    /// Every run, in the order they ran.
    pub runs: Vec<OrderResult>,
}

async fn run_order(
    model: &Arc<Model>,
    tokenizer: &Arc<Tokenizer>,
    store: Arc<dyn KvStore>,
    cfg: EngineConfig,
    cached: &[u32],
    fresh: &[Vec<u32>],
    max_tokens: usize,
) -> Result<OrderResult, EngineError> {
    let order = cfg.order;
    let budget = cfg.token_budget;
    let engine = Engine::start(model.clone(), tokenizer.clone(), Some(store), cfg)?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    let e = engine.clone();
    let req = bench_request("cached", cached.to_vec(), max_tokens, Some(Strategy::Cake));
    tasks.push(tokio::spawn(async move { run_request(&e, req).await }));
    // The fresh ones arrive right behind it.
    tokio::time::sleep(Duration::from_millis(1)).await;
    for (i, p) in fresh.iter().enumerate() {
        let e = engine.clone();
        let req = bench_request(&format!("fresh-{i}"), p.clone(), max_tokens, None);
        tasks.push(tokio::spawn(async move { run_request(&e, req).await }));
    }
    let mut usages = Vec::new();
    for t in tasks {
        usages.push(
            t.await
                .map_err(|e| EngineError::Internal(format!("request task failed: {e}")))??,
        );
    }
    let total_s = start.elapsed().as_secs_f64();
    let steps = engine.step_history();
    let fill =
        steps.iter().map(|&s| s as f64 / budget as f64).sum::<f64>() / steps.len().max(1) as f64;
    let fresh_ttft: Vec<f64> = usages[1..].iter().map(|u| u.ttft_ms).collect();
    Ok(OrderResult {
        order: match order {
            BudgetOrder::Adaptive => "adaptive".into(),
            BudgetOrder::Fcfs => "fcfs".into(),
        },
        total_s,
        cached_ttft_ms: usages[0].ttft_ms,
        cached_loaded_tokens: usages[0].loaded_tokens,
        fresh_ttft_ms_mean: fresh_ttft.iter().sum::<f64>() / fresh_ttft.len().max(1) as f64,
        budget_fill: fill,
        steps: steps.len(),
    })
}

pub async fn run(
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    bench: &MixedBench,
    mut progress: impl FnMut(&str),
) -> Result<MixedReport, EngineError> {
    let cfg = EngineConfig {
        write_back: false,
        ..bench.engine.clone()
    };
    let vocab = tokenizer.vocab_size();
    let cached = random_prompt(bench.cached_tokens, bench.seed, vocab);
    let mut rng = Rng::new(bench.seed + 1);
    let fresh: Vec<Vec<u32>> = (0..bench.fresh)
        .map(|i| {
            let span = (bench.fresh_max - bench.fresh_min + 1) as u64;
            let n = bench.fresh_min + rng.below(span) as usize;
            random_prompt(n, bench.seed + 100 + i as u64, vocab)
        })
        .collect();
    let mem: Arc<dyn KvStore> = Arc::new(MemoryStore::new(u64::MAX / 2));
    fill_store(&model, &tokenizer, &mem, &cfg, &cached).await?;
    let mut bw = bench.bandwidth;
    if bw <= 0.0 {
        // Balanced: the link loads the cached prompt as fast as the model
        // computes it.
        let mut cache = model.new_cache();
        let t = Instant::now();
        for piece in cached.chunks(cfg.chunk_tokens) {
            model.forward_no_logits(&mut cache, piece)?;
        }
        let secs = t.elapsed().as_secs_f64();
        let probe = Engine::start(model.clone(), tokenizer.clone(), None, cfg.clone())?;
        let chunks = cached.len() / cfg.chunk_tokens;
        bw = chunks as f64 * probe.chunk_bytes() as f64 / secs;
    }
    progress(&format!("link {:.2} GB/s", bw / 1e9));
    let mut runs = Vec::new();
    let (mut fcfs, mut adaptive, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..bench.repeat.max(1) {
        let orders = if round % 2 == 0 {
            [BudgetOrder::Fcfs, BudgetOrder::Adaptive]
        } else {
            [BudgetOrder::Adaptive, BudgetOrder::Fcfs]
        };
        let mut pair = [0.0; 2];
        for order in orders {
            let link = Arc::new(Link::new(bw as u64, Duration::ZERO));
            let store: Arc<dyn KvStore> = Arc::new(ThrottledStore::new(mem.clone(), link, false));
            let r = run_order(
                &model,
                &tokenizer,
                store,
                EngineConfig {
                    order,
                    ..cfg.clone()
                },
                &cached,
                &fresh,
                bench.max_tokens,
            )
            .await?;
            progress(&format!(
                "run {}/{}: {} all done in {:.2} s (cached request loaded {} tokens)",
                round + 1,
                bench.repeat.max(1),
                r.order,
                r.total_s,
                r.cached_loaded_tokens
            ));
            match order {
                BudgetOrder::Fcfs => {
                    pair[0] = r.total_s;
                    fcfs.push(r.total_s);
                }
                BudgetOrder::Adaptive => {
                    pair[1] = r.total_s;
                    adaptive.push(r.total_s);
                }
            }
            runs.push(r);
        }
        pairs.push(pair[0] / pair[1]);
    }
    let (fcfs_s, adaptive_s) = (median(&fcfs), median(&adaptive));
    Ok(MixedReport {
        fcfs_s,
        adaptive_s,
        speedup: fcfs_s / adaptive_s,
        pair_speedups: pairs,
        bandwidth_bytes_per_s: bw,
        runs,
    })
}
