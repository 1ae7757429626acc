//! `cake bench ttft`: time to first token of one prompt whose chunks are
//! all stored, under `compute`, `load`, `cake` and `auto`, across contexts
//! and storage bandwidths (a throttled link over an in-memory store), next
//! to the oracle: the best split computed from the per-chunk compute times
//! and the load time measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::common::{bench_request, fill_store, median, random_prompt, run_request};
use crate::kv::{KvStore, Link, MemoryStore, ThrottledStore};
use crate::worker::{Engine, EngineConfig, Strategy};
use crate::{EngineError, Model, Tokenizer};

/// Bandwidths to run: given, or spanning multiples of the balanced one.
#[derive(Debug, Clone)]
pub enum Bandwidths {
    List(Vec<f64>),
    /// Multiples of the bandwidth at which load-only equals compute-only
    /// for each context (0.1× to 10×).
    Auto(Vec<f64>),
}

#[derive(Debug, Clone)]
pub struct TtftBench {
    pub contexts: Vec<usize>,
    pub bandwidths: Bandwidths,
    pub engine: EngineConfig,
    pub seed: u64,
    /// Rounds of all four strategies, one run of each per round; medians
    /// are kept (the machine is noisy).
    pub repeat: usize,
}

/// One measurement (`--json` rows).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub context: usize,
    pub bandwidth_bytes_per_s: f64,
    pub strategy: String,
    pub ttft_ms: f64,
    pub computed_tokens: usize,
    pub loaded_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TtftReport {
    pub rows: Vec<Row>,
    pub chunk_tokens: usize,
    pub chunk_bytes: u64,
    /// Per context: the bandwidth at which loading all stored chunks takes
    /// as long as computing them.
    pub balanced_bandwidth: Vec<(usize, f64)>,
    /// Per context and bandwidth: the medians of the ratios taken within
    /// each round (strategies run in rounds, one run of each per round).
    pub ratios: Vec<Ratios>,
}

/// The aims' ratios at one context and bandwidth, each the median over the
/// rounds of that round's ratio (so they need not equal the ratio of the
/// median TTFTs in [`Row`]).
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub context: usize,
    pub bandwidth_bytes_per_s: f64,
    pub cake_over_oracle: f64,
    /// cake / min(compute, load).
    pub cake_over_min: f64,
    /// auto / min(compute, load).
    pub auto_over_min: f64,
}

impl TtftReport {
    pub fn get(&self, context: usize, bw: f64, strategy: &str) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.context == context && r.bandwidth_bytes_per_s == bw && r.strategy == strategy
        })
    }
}

/// The oracle: the best split of the cached chunks given each chunk's
/// measured compute time and one chunk's load time, plus the computed
/// suffix.
fn oracle(chunk_s: &[f64], cached: usize, load_s: f64) -> (f64, usize) {
    let suffix: f64 = chunk_s[cached..].iter().sum();
    let mut best = (f64::INFINITY, 0);
    let mut prefix = 0.0f64;
    for (k, &chunk) in chunk_s[..cached].iter().chain([&0.0]).enumerate() {
        let t = prefix.max((cached - k) as f64 * load_s) + suffix;
        if t < best.0 {
            best = (t, k);
        }
        prefix += chunk;
    }
    best
}

/// Each chunk's compute time, prefilling `prompt` chunk by chunk as the
/// engine does (seconds).
fn chunk_pass(model: &Model, prompt: &[u32], c: usize) -> Result<Vec<f64>, EngineError> {
    let mut cache = model.new_cache();
    prompt
        .chunks(c)
        .map(|piece| {
            let t = Instant::now();
            model.forward_no_logits(&mut cache, piece)?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// The median of each chunk's time over several passes.
fn chunkwise_median(passes: &[Vec<f64>]) -> Vec<f64> {
    let n = passes.first().map_or(0, Vec::len);
    (0..n)
        .map(|i| median(&passes.iter().map(|p| p[i]).collect::<Vec<_>>()))
        .collect()
}

/// Runs the benchmark; `progress` gets a line per measurement.
pub async fn run(
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    bench: &TtftBench,
    mut progress: impl FnMut(&str),
) -> Result<TtftReport, EngineError> {
    let cfg = EngineConfig {
        write_back: false,
        ..bench.engine.clone()
    };
    let c = cfg.chunk_tokens;
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    let mut balanced = Vec::new();
    let mut chunk_bytes = 0;
    for (ci, &context) in bench.contexts.iter().enumerate() {
        model.check_fits(context, 1)?;
        let prompt = random_prompt(context, bench.seed + ci as u64, tokenizer.vocab_size());
        let mem: Arc<dyn KvStore> = Arc::new(MemoryStore::new(u64::MAX / 2));
        fill_store(&model, &tokenizer, &mem, &cfg, &prompt).await?;

        // Each chunk's compute time, chunk by chunk as the engine runs it
        // (median over the runs): the balanced bandwidth `auto` spans from.
        // Each round below times its own pass for its oracle.
        let runs = bench.repeat.max(1);
        let passes = (0..runs)
            .map(|_| chunk_pass(&model, &prompt, c))
            .collect::<Result<Vec<_>, _>>()?;
        let chunk_shape = chunkwise_median(&passes);
        let cached = (context - 1) / c; // the chunk with the last token is computed
        chunk_bytes =
            Engine::start(model.clone(), tokenizer.clone(), None, cfg.clone())?.chunk_bytes();
        let compute_cached_s: f64 = chunk_shape[..cached].iter().sum();
        let bw_balanced = (cached as f64 * chunk_bytes as f64) / compute_cached_s.max(1e-9);
        balanced.push((context, bw_balanced));
        let bws: Vec<f64> = match &bench.bandwidths {
            Bandwidths::List(l) => l.clone(),
            Bandwidths::Auto(m) => m.iter().map(|x| x * bw_balanced).collect(),
        };
        for bw in bws {
            let link = Arc::new(Link::new(bw as u64, Duration::ZERO));
            let store: Arc<dyn KvStore> = Arc::new(ThrottledStore::new(mem.clone(), link, false));
            let engine = Engine::start(model.clone(), tokenizer.clone(), Some(store), cfg.clone())?;
            // Rounds of all four strategies, so a slow spell of the shared
            // machine lands on every strategy alike rather than on whichever
            // ran during it. Compute first in each round: it also warms the
            // worker's compute meter, and load warms its bandwidth meter,
            // which `auto` decides from.
            let strategies = [
                Strategy::Compute,
                Strategy::Load,
                Strategy::Cake,
                Strategy::Auto,
            ];
            let mut runs_of: Vec<Vec<_>> = vec![Vec::new(); strategies.len()];
            // Each round also times the prompt chunk by chunk, for that
            // round's oracle.
            let mut shapes = Vec::new();
            for r in 0..runs {
                shapes.push(chunk_pass(&model, &prompt, c)?);
                let mut line = format!(
                    "context {context}, {:.3} GB/s, round {}/{runs}:",
                    bw / 1e9,
                    r + 1
                );
                for (k, &s) in strategies.iter().enumerate() {
                    let u = run_request(
                        &engine,
                        bench_request(s.as_str(), prompt.clone(), 1, Some(s)),
                    )
                    .await?;
                    line += &format!(" {} {:.0}", s.as_str(), u.ttft_ms);
                    runs_of[k].push(u);
                }
                if runs > 1 {
                    progress(&format!("{line} ms"));
                }
            }
            // The oracle at a given compute-only and load-only TTFT: the
            // chunk pass's shape scaled to that compute-only TTFT, and one
            // chunk's load time from the load-only TTFT less the computed
            // suffix, over the chunks it loaded.
            let oracle_at = |shape: &[f64], compute_ms: f64, load_ms: f64| {
                let level = compute_ms / 1e3 / shape.iter().sum::<f64>().max(1e-12);
                let chunk_s: Vec<f64> = shape.iter().map(|t| t * level).collect();
                let suffix_s: f64 = chunk_s[cached..].iter().sum();
                let load_s = ((load_ms / 1e3 - suffix_s) / cached.max(1) as f64).max(0.0);
                let (t, k) = oracle(&chunk_s, cached, load_s);
                (t * 1e3, k)
            };
            // Each round's ratios, from that round's own runs: a slow spell
            // moves both sides of a ratio measured together.
            let mut per_round = [Vec::new(), Vec::new(), Vec::new()];
            for r in 0..runs {
                let [compute, load, cake, auto] = [0, 1, 2, 3].map(|k| runs_of[k][r].ttft_ms);
                let best = compute.min(load);
                per_round[0].push(cake / oracle_at(&shapes[r], compute, load).0);
                per_round[1].push(cake / best);
                per_round[2].push(auto / best);
            }
            let mut ttft = std::collections::HashMap::new();
            for (&s, mut us) in strategies.iter().zip(runs_of) {
                us.sort_by(|a, b| a.ttft_ms.total_cmp(&b.ttft_ms));
                let u = us.swap_remove(us.len() / 2);
                progress(&format!(
                    "context {context}, {:.3} GB/s: {} {:.0} ms (loaded {}, computed {}{})",
                    bw / 1e9,
                    s.as_str(),
                    u.ttft_ms,
                    u.loaded_tokens,
                    u.computed_tokens,
                    if s == Strategy::Auto {
                        format!(", chose {}", u.strategy)
                    } else {
                        String::new()
                    }
                ));
                ttft.insert(s, u.ttft_ms);
                rows.push(Row {
                    context,
                    bandwidth_bytes_per_s: bw,
                    strategy: s.as_str().into(),
                    ttft_ms: u.ttft_ms,
                    computed_tokens: u.computed_tokens,
                    loaded_tokens: u.loaded_tokens,
                });
            }
            let (t, k) = oracle_at(
                &chunkwise_median(&shapes),
                ttft[&Strategy::Compute],
                ttft[&Strategy::Load],
            );
            rows.push(Row {
                context,
                bandwidth_bytes_per_s: bw,
                strategy: "oracle".into(),
                ttft_ms: t,
                computed_tokens: context - (cached - k) * c,
                loaded_tokens: (cached - k) * c,
            });
            ratios.push(Ratios {
                context,
                bandwidth_bytes_per_s: bw,
                cake_over_oracle: median(&per_round[0]),
                cake_over_min: median(&per_round[1]),
                auto_over_min: median(&per_round[2]),
            });
        }
    }
    Ok(TtftReport {
        rows,
        chunk_tokens: c,
        chunk_bytes,
        balanced_bandwidth: balanced,
        ratios,
    })
}

#[cfg(test)]
mod tests {
    use super::oracle;

    #[test]
    fn oracle_picks_the_crossing() {
        let chunks = vec![1.0; 11];
        // Free loading: compute nothing of the 10 cached chunks.
        assert_eq!(oracle(&chunks, 10, 0.0), (1.0, 0));
        // Loading as costly as computing: split in half.
        let (t, k) = oracle(&chunks, 10, 1.0);
        assert_eq!((t, k), (6.0, 5));
    }
}
