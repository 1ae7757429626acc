//! `cake bench decode`: decode speed against the memory-bandwidth bound,
//! both measured in one run. Each step of `batch` streams reads every
//! weight matrix once (the dense layers and the LM head; the embedding
//! only for its rows) and each stream's KV cache; the bound is those bytes
//! divided by the memory read rate this machine reaches on a buffer far
//! larger than its caches.

use std::time::Instant;

use serde::Serialize;

use crate::model::{BatchItem, Logits};
use crate::{EngineError, Model, Rng};

/// What to run.
#[derive(Debug, Clone)]
pub struct DecodeBench {
    /// Tokens in each stream's cache before decoding starts.
    pub context: usize,
    /// Streams decoded together (one batched step each).
    pub batch: usize,
    /// Decode steps timed.
    pub steps: usize,
    pub seed: u64,
}

/// The report (`--json` writes it as is).
#[derive(Debug, Clone, Serialize)]
pub struct DecodeReport {
    pub context: usize,
    pub batch: usize,
    pub steps: usize,
    pub device: String,
    /// Median wall time of one step (all streams).
    pub step_ms: f64,
    /// Output tokens per second, all streams together.
    pub tokens_per_s: f64,
    /// Bytes of weights one step reads, as the model holds them.
    pub weight_bytes: u64,
    /// Bytes of KV cache one step reads (every stream, the average length).
    pub kv_bytes: u64,
    /// Memory read rate measured in this run, GB/s.
    pub read_gbps: f64,
    /// Tokens per second if a step took only its bytes' read time.
    pub bound_tokens_per_s: f64,
    /// `tokens_per_s / bound_tokens_per_s` (the aim: ≥ 0.8 for one stream).
    pub fraction_of_bound: f64,
}

/// The best of a few parallel sums over `bytes` of f32s: a read rate no
/// cache can serve.
fn read_rate(bytes: usize) -> f64 {
    let n = bytes / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let part = n.div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..4 {
        let t0 = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(part)
                .map(|c| {
                    s.spawn(move || {
                        // Eight lanes, so the sum is not one serial chain.
                        let mut acc = [0f32; 8];
                        for ch in c.chunks_exact(8) {
                            for k in 0..8 {
                                acc[k] += ch[k];
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(total);
        best = best.max(bytes as f64 / t0.elapsed().as_secs_f64());
    }
    best
}

pub fn run(model: &Model, b: &DecodeBench) -> Result<DecodeReport, EngineError> {
    if b.batch == 0 || b.steps == 0 {
        return Err(EngineError::BadRequest(
            "batch and steps must be positive".into(),
        ));
    }
    let c = model.config();
    if b.context + b.steps + 1 > model.max_context() {
        return Err(EngineError::BadRequest(format!(
            "context {} plus {} steps exceeds the model's {}",
            b.context,
            b.steps,
            model.max_context()
        )));
    }
    let mut rng = Rng::new(b.seed);
    let mut caches = Vec::with_capacity(b.batch);
    let mut next = Vec::with_capacity(b.batch);
    for _ in 0..b.batch {
        let mut cache = model.new_cache();
        let prompt: Vec<u32> = (0..b.context.max(1))
            .map(|_| rng.below(c.vocab_size as u64) as u32)
            .collect();
        model.prefill(&mut cache, &prompt, 256)?;
        caches.push(cache);
        next.push(rng.below(c.vocab_size as u64) as u32);
    }
    let mut times = Vec::with_capacity(b.steps);
    // One untimed step warms the caches and the thread pool.
    for step in 0..=b.steps {
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut items: Vec<BatchItem<'_>> = caches
            .iter_mut()
            .zip(&toks)
            .map(|(cache, t)| BatchItem {
                cache,
                tokens: t,
                logits: Logits::Last,
            })
            .collect();
        let t0 = Instant::now();
        let out = model.forward_batch(&mut items)?;
        let dt = t0.elapsed().as_secs_f64();
        if step > 0 {
            times.push(dt);
        }
        // Greedy: the next token of each stream is its argmax.
        for (n, logits) in next.iter_mut().zip(out) {
            if let Some(l) = logits {
                let v = l.to_vec()?;
                *n = v
                    .iter()
                    .enumerate()
                    .fold((0, f32::MIN), |m, (i, &x)| if x > m.1 { (i, x) } else { m })
                    .0 as u32;
            }
        }
    }
    let step_s = super::common::median(&times);
    let weights = model.step_weight_bytes();
    let avg_len = (b.context + b.steps / 2) as u64;
    let kv_bytes = b.batch as u64 * avg_len * c.kv_values_per_token() as u64 * 4;
    let rate = read_rate(1 << 30);
    let bound_step_s = (weights + kv_bytes) as f64 / rate;
    let tokens_per_s = b.batch as f64 / step_s;
    let bound_tokens_per_s = b.batch as f64 / bound_step_s;
    Ok(DecodeReport {
        context: b.context,
        batch: b.batch,
        steps: b.steps,
        device: model.device().describe(),
        step_ms: step_s * 1e3,
        tokens_per_s,
        weight_bytes: weights,
        kv_bytes,
        read_gbps: rate / 1e9,
        bound_tokens_per_s,
        fraction_of_bound: tokens_per_s / bound_tokens_per_s,
    })
}
