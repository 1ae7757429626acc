//! What a worker reports about its load, and the time to first token a
//! request would see on it (DESIGN.md sections 1 and 5).
//!
//! The model: a worker has two resources, compute and I/O, each with a
//! backlog. A request's cached chunks are served the Cake way — compute
//! claims chunks from the front (chunk `i` costs `a + b·i`), I/O loads from
//! the back (each chunk costs `ℓ = chunk_tokens · kv_bytes_per_token / B`) —
//! and the two meet where they finish together. Each side starts only when
//! its own backlog has drained, so a busy compute side with an idle link
//! shifts the meeting point toward loading, and the other way round. The
//! uncached suffix is computed after the cached part is ready (its attention
//! reads every cached chunk), at the positions it occupies.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cost::ChunkCost;
use crate::ledger::Work;

/// A load snapshot a worker reports. Rates are moving averages the worker
/// measures; a rate it has not measured yet is reported as `0` (or any
/// non-finite or negative value) and counts as unknown.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// Prompt tokens queued for prefill, not yet computed.
    pub queued_compute_tokens: u64,
    /// KV bytes queued for loading, not yet read.
    pub queued_io_bytes: u64,
    /// Seconds to compute chunk 0 (`a` of `t(i) = a + b·i`).
    pub compute_a: f64,
    /// Extra seconds per chunk index (`b` of `t(i) = a + b·i`).
    pub compute_b: f64,
    /// Storage read bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Tokens per chunk the rates above refer to.
    pub chunk_tokens: u64,
    /// KV bytes per token as this worker stores them (model and codec).
    pub kv_bytes_per_token: u64,
}

/// Values used for whatever a [`WorkerLoad`] leaves unknown. The built-in
/// defaults describe a Llama-3-8B-sized model (f16 KV, 128 KiB per token)
/// on a mid-range GPU with a 10 Gbit/s storage link; a gateway should
/// override them from config for its own fleet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateDefaults {
    /// Seconds to compute chunk 0.
    pub compute_a: f64,
    /// Extra seconds per chunk index.
    pub compute_b: f64,
    /// Storage read bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Tokens per chunk.
    pub chunk_tokens: u64,
    /// KV bytes per token.
    pub kv_bytes_per_token: u64,
}

impl Default for RateDefaults {
    fn default() -> Self {
        Self {
            compute_a: 0.02,
            compute_b: 0.0006,
            bandwidth: 1.25e9,
            chunk_tokens: 256,
            kv_bytes_per_token: 128 * 1024,
        }
    }
}

impl RateDefaults {
    /// These defaults with any invalid value replaced by the built-in one,
    /// so that predictions never divide by zero or produce NaN.
    pub fn sanitized(&self) -> RateDefaults {
        self.or_from(&RateDefaults::default())
    }

    /// These rates with any invalid one replaced from `d`: `a` when not
    /// finite and positive; `b` when `a` was replaced (they are measured
    /// together) or not finite and non-negative; a bandwidth not finite and
    /// positive; a zero chunk size or KV size. Replaced rates are rescaled
    /// to this chunk size when it is known (a token at position `x` costs
    /// about `a/c + b·x/c²` whatever the chunk size `c`, so `a` scales with
    /// the chunk size and `b` with its square).
    fn or_from(&self, d: &RateDefaults) -> RateDefaults {
        let a_ok = self.compute_a.is_finite() && self.compute_a > 0.0;
        let b_ok = a_ok && self.compute_b.is_finite() && self.compute_b >= 0.0;
        let r = if self.chunk_tokens > 0 && d.chunk_tokens > 0 {
            self.chunk_tokens as f64 / d.chunk_tokens as f64
        } else {
            1.0
        };
        RateDefaults {
            compute_a: if a_ok {
                self.compute_a
            } else {
                d.compute_a * r
            },
            compute_b: if b_ok {
                self.compute_b
            } else {
                d.compute_b * r * r
            },
            bandwidth: if self.bandwidth.is_finite() && self.bandwidth > 0.0 {
                self.bandwidth
            } else {
                d.bandwidth
            },
            chunk_tokens: nonzero_or(self.chunk_tokens, d.chunk_tokens),
            kv_bytes_per_token: nonzero_or(self.kv_bytes_per_token, d.kv_bytes_per_token),
        }
    }
}

fn nonzero_or(x: u64, default: u64) -> u64 {
    if x == 0 { default } else { x }
}

impl WorkerLoad {
    /// This report with unknown rates replaced from `defaults`. `a` is
    /// unknown when not finite and positive; `b` is taken only with a known
    /// `a` (they are measured together) and when finite and non-negative.
    pub fn resolved(&self, defaults: &RateDefaults) -> WorkerLoad {
        let r = RateDefaults {
            compute_a: self.compute_a,
            compute_b: self.compute_b,
            bandwidth: self.bandwidth,
            chunk_tokens: self.chunk_tokens,
            kv_bytes_per_token: self.kv_bytes_per_token,
        }
        .or_from(&defaults.sanitized());
        WorkerLoad {
            queued_compute_tokens: self.queued_compute_tokens,
            queued_io_bytes: self.queued_io_bytes,
            compute_a: r.compute_a,
            compute_b: r.compute_b,
            bandwidth: r.bandwidth,
            chunk_tokens: r.chunk_tokens,
            kv_bytes_per_token: r.kv_bytes_per_token,
        }
    }

    /// Seconds to drain the compute backlog and the I/O backlog, each on its
    /// own resource. The backlog's positions are unknown, so compute tokens
    /// are charged at chunk 0's rate (`a` per `chunk_tokens`): a lower bound
    /// that is close when `b·i` is small next to `a`.
    pub fn backlog_secs(&self, defaults: &RateDefaults) -> (f64, f64) {
        let w = self.resolved(defaults);
        let compute = self.queued_compute_tokens as f64 / w.chunk_tokens as f64 * w.compute_a;
        let io = self.queued_io_bytes as f64 / w.bandwidth;
        (compute, io)
    }

    /// The same worker with both backlogs empty.
    pub fn idle(&self) -> WorkerLoad {
        WorkerLoad {
            queued_compute_tokens: 0,
            queued_io_bytes: 0,
            ..*self
        }
    }
}

/// What placement needs to know about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RequestShape {
    /// Prompt length in tokens.
    pub prompt_tokens: u64,
    /// Leading prompt tokens whose KV is already stored (only whole chunks
    /// count; the rest is rounded down).
    pub cached_tokens: u64,
    /// KV bytes per token of the stored chunks; `0` means "the worker's".
    pub kv_bytes_per_token: u64,
}

/// A request's predicted TTFT on one worker and the work it adds there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Time until the first token, backlogs included.
    pub ttft: Duration,
    /// Time until the first token on the same worker with no backlog: what
    /// the request costs by itself.
    pub idle_ttft: Duration,
    /// Cached chunks the compute side takes (from the front).
    pub computed_chunks: u64,
    /// Cached chunks the I/O side loads (from the back).
    pub loaded_chunks: u64,
    /// Tokens this request adds to the worker's compute queue.
    pub compute_tokens: u64,
    /// Bytes this request adds to the worker's I/O queue.
    pub io_bytes: u64,
}

impl Prediction {
    /// The work to record in the in-flight ledger when dispatching.
    pub fn work(&self) -> Work {
        Work {
            compute_tokens: self.compute_tokens,
            io_bytes: self.io_bytes,
        }
    }
}

/// [`predict`] with the built-in [`RateDefaults`], returning the TTFT only.
pub fn predict_ttft(load: &WorkerLoad, req: &RequestShape) -> Duration {
    predict(load, req, &RateDefaults::default()).ttft
}

/// Predicts `req` on a worker reporting `load`, using `defaults` for any
/// rate the worker has not measured.
pub fn predict(load: &WorkerLoad, req: &RequestShape, defaults: &RateDefaults) -> Prediction {
    predict_with_local(load, req, 0, defaults)
}

/// Like [`predict`], with the first `local_tokens` of the prompt in the
/// worker's own tiers (memory, disk). Those chunks cost neither a prefill
/// nor a crossing of the shared store's link: a local tier reads at memory
/// or disk speed, far above what a prefill of the same tokens takes, so
/// they are taken as ready. The rest of the cached prefix (stored in the
/// shared store) is split the Cake way between computing from the first
/// chunk past the local ones and loading over the link; the uncached
/// suffix is computed after it. `local_tokens` beyond the cached prefix
/// count as cached (the worker holds what the shared store may not).
pub fn predict_with_local(
    load: &WorkerLoad,
    req: &RequestShape,
    local_tokens: u64,
    defaults: &RateDefaults,
) -> Prediction {
    let w = load.resolved(defaults);
    let ct = w.chunk_tokens;
    let kvb = nonzero_or(req.kv_bytes_per_token, w.kv_bytes_per_token);
    // Never the chunk holding the last prompt token: it is computed.
    let reusable = req.prompt_tokens.saturating_sub(1) / ct * ct;
    let local = local_tokens.min(reusable) / ct;
    let cached = req.cached_tokens.min(req.prompt_tokens).max(local * ct);
    let n = cached / ct;
    // The last prompt token is always computed: its logits give the first
    // output token.
    let fresh = (req.prompt_tokens - n * ct).max(u64::from(req.prompt_tokens > 0));
    let cost = ChunkCost {
        a: w.compute_a,
        b: w.compute_b,
        load: (ct as f64) * (kvb as f64) / w.bandwidth,
    };
    // The shared-store chunks start at chunk `local`: computing the first
    // of them costs `a + b·local`.
    let remote = n - local;
    let remote_cost = ChunkCost {
        a: w.compute_a + w.compute_b * local as f64,
        ..cost
    };
    let (dc, di) = w.backlog_secs(defaults);
    let (k, ready) = split_after_backlogs(&remote_cost, remote, dc, di);
    let (_, idle_ready) = split_after_backlogs(&remote_cost, remote, 0.0, 0.0);
    let suffix = suffix_secs(&cost, n, fresh as f64 / ct as f64);
    Prediction {
        ttft: secs(ready + suffix),
        idle_ttft: secs(idle_ready + suffix),
        computed_chunks: k,
        loaded_chunks: n - k,
        compute_tokens: k * ct + fresh,
        io_bytes: (remote - k).saturating_mul(ct).saturating_mul(kvb),
    }
}

/// The Cake split of `n` cached chunks when compute becomes free at `dc`
/// and I/O at `di`: the `k` computed from the front minimising the time
/// both sides are done, and that time. With no cached chunks, or all of
/// them computed, the I/O side takes no part (and its backlog no toll).
fn split_after_backlogs(cost: &ChunkCost, n: u64, dc: f64, di: f64) -> (u64, f64) {
    let compute_end = |k: u64| dc + cost.compute_time(k as usize);
    let io_end = |k: u64| {
        if k < n {
            di + cost.load_time((n - k) as usize)
        } else {
            0.0
        }
    };
    let at = |k: u64| compute_end(k).max(io_end(k));
    // compute_end rises with k, io_end falls (below n): find the first k
    // where compute is no earlier than I/O; the best split is there or one
    // before it, unless computing everything (no I/O) is better still.
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if compute_end(mid) >= di + cost.load_time((n - mid) as usize) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    [lo.saturating_sub(1), lo, n]
        .into_iter()
        .map(|k| (k, at(k)))
        .min_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)))
        .unwrap_or((n, at(n)))
}

/// Compute time of `f` chunks' worth of tokens starting at chunk `n`:
/// `Σ (a + b·i)` for whole chunks, interpolated for a partial one.
fn suffix_secs(cost: &ChunkCost, n: u64, f: f64) -> f64 {
    f * cost.a + cost.b * f * (n as f64 + (f - 1.0).max(0.0) / 2.0)
}

/// Seconds to a `Duration`, clamping NaN and negatives to zero and
/// overflow to `Duration::MAX`.
pub(crate) fn secs(x: f64) -> Duration {
    if x.is_nan() || x <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(x).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::best_split;

    fn worker() -> WorkerLoad {
        WorkerLoad {
            queued_compute_tokens: 0,
            queued_io_bytes: 0,
            compute_a: 0.04,
            compute_b: 0.001,
            bandwidth: 1e9,
            chunk_tokens: 256,
            kv_bytes_per_token: 100_000,
        }
    }

    fn cached(prompt: u64, cached: u64) -> RequestShape {
        RequestShape {
            prompt_tokens: prompt,
            cached_tokens: cached,
            kv_bytes_per_token: 0,
        }
    }

    /// A worker that said its chunk size but has measured nothing gets the
    /// default rates for that chunk size: the same prompt costs the same,
    /// and its cached chunks count.
    #[test]
    fn default_rates_are_rescaled_to_a_known_chunk_size() {
        let d = RateDefaults::default();
        let small = WorkerLoad {
            chunk_tokens: 16,
            ..WorkerLoad::default()
        };
        let w = small.resolved(&d);
        assert!((w.compute_a - d.compute_a / 16.0).abs() < 1e-12);
        assert!((w.compute_b - d.compute_b / 256.0).abs() < 1e-12);
        let fresh = RequestShape {
            prompt_tokens: 512,
            cached_tokens: 0,
            kv_bytes_per_token: 0,
        };
        let (a, b) = (
            predict(&small, &fresh, &d).ttft.as_secs_f64(),
            predict(&WorkerLoad::default(), &fresh, &d)
                .ttft
                .as_secs_f64(),
        );
        assert!((a - b).abs() < 0.05 * b, "{a} vs {b}");
        let cached = RequestShape {
            cached_tokens: 96,
            ..fresh
        };
        assert_eq!(
            predict(&small, &cached, &d).computed_chunks
                + predict(&small, &cached, &d).loaded_chunks,
            6
        );
    }

    #[test]
    fn idle_cached_split_matches_best_split() {
        let w = worker();
        let p = predict(&w, &cached(64 * 256, 64 * 256), &RateDefaults::default());
        let cost = ChunkCost {
            a: 0.04,
            b: 0.001,
            load: 256.0 * 100_000.0 / 1e9,
        };
        let best = best_split(&cost, 64);
        assert_eq!(p.computed_chunks as usize, best.computed, "{p:?} {best:?}");
        // Plus the one recomputed last token.
        let last = (0.04 + 0.001 * 64.0) / 256.0;
        assert!(
            (p.ttft.as_secs_f64() - best.time - last).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(p.ttft, p.idle_ttft);
    }

    #[test]
    fn fresh_prompt_is_compute_only_and_ignores_io_backlog() {
        let mut w = worker();
        w.queued_io_bytes = 10_000_000_000; // 10 s of I/O backlog
        let p = predict(&w, &cached(1024, 0), &RateDefaults::default());
        let want = ChunkCost {
            a: 0.04,
            b: 0.001,
            load: 0.0,
        }
        .compute_time(4);
        assert!((p.ttft.as_secs_f64() - want).abs() < 1e-9, "{p:?}");
        assert_eq!(p.compute_tokens, 1024);
        assert_eq!(p.io_bytes, 0);
    }

    #[test]
    fn busy_compute_shifts_cached_work_to_loading() {
        let idle = worker();
        let mut busy = worker();
        busy.queued_compute_tokens = 256 * 50; // 2 s of compute backlog
        let req = cached(32 * 256 + 10, 32 * 256);
        let d = RateDefaults::default();
        let pi = predict(&idle, &req, &d);
        let pb = predict(&busy, &req, &d);
        assert!(pi.computed_chunks > 0, "{pi:?}");
        assert_eq!(pb.computed_chunks, 0, "{pb:?}");
        assert_eq!(pb.loaded_chunks, 32);
        // Loading all 32 chunks takes 0.82 s, hidden under the 2 s backlog;
        // the suffix waits for compute.
        assert!(
            pb.ttft.as_secs_f64() > 2.0 && pb.ttft.as_secs_f64() < 2.1,
            "{pb:?}"
        );
    }

    #[test]
    fn busy_io_shifts_cached_work_to_compute() {
        let mut w = worker();
        w.queued_io_bytes = 5_000_000_000; // 5 s
        let p = predict(&w, &cached(16 * 256, 16 * 256), &RateDefaults::default());
        assert_eq!(p.loaded_chunks, 0, "{p:?}");
        assert!(p.ttft.as_secs_f64() < 1.0, "{p:?}");
        assert_eq!(p.io_bytes, 0);
    }

    #[test]
    fn cached_tokens_round_down_to_whole_chunks_and_cap_at_prompt() {
        let p = predict(&worker(), &cached(300, 5000), &RateDefaults::default());
        assert_eq!(p.computed_chunks + p.loaded_chunks, 1);
        assert_eq!(p.compute_tokens, p.computed_chunks * 256 + 44);
    }

    #[test]
    fn unknown_rates_use_defaults_and_never_nan() {
        let unknown = WorkerLoad {
            queued_compute_tokens: 1000,
            queued_io_bytes: 1000,
            compute_a: f64::NAN,
            compute_b: -1.0,
            bandwidth: 0.0,
            chunk_tokens: 0,
            kv_bytes_per_token: 0,
        };
        let d = RateDefaults::default();
        let r = unknown.resolved(&d);
        assert_eq!(r.compute_a, d.compute_a);
        assert_eq!(r.compute_b, d.compute_b);
        assert_eq!(r.bandwidth, d.bandwidth);
        assert_eq!(r.chunk_tokens, d.chunk_tokens);
        let p = predict(&unknown, &cached(4096, 2048), &d);
        assert!(
            p.ttft > Duration::ZERO && p.ttft < Duration::from_secs(10),
            "{p:?}"
        );
        // Bad defaults fall back to the built-in ones as well.
        let bad = RateDefaults {
            compute_a: 0.0,
            compute_b: f64::INFINITY,
            bandwidth: -5.0,
            chunk_tokens: 0,
            kv_bytes_per_token: 0,
        };
        assert_eq!(bad.sanitized(), RateDefaults::default());
        let p = predict(&WorkerLoad::default(), &cached(4096, 4096), &bad);
        assert!(p.ttft.as_secs_f64().is_finite() && p.ttft > Duration::ZERO);
    }

    #[test]
    fn empty_prompt_costs_nothing() {
        let p = predict(&worker(), &cached(0, 0), &RateDefaults::default());
        assert_eq!(p.ttft, Duration::ZERO);
        assert_eq!(p.compute_tokens, 0);
    }

    #[test]
    fn secs_clamps() {
        assert_eq!(secs(f64::NAN), Duration::ZERO);
        assert_eq!(secs(-1.0), Duration::ZERO);
        assert_eq!(secs(f64::INFINITY), Duration::MAX);
        assert_eq!(secs(1.5), Duration::from_millis(1500));
    }
}
