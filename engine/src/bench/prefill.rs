//! `cake bench prefill`: prefill throughput, each chunk's compute time
//! against its index with the fit `t(i) = a + b·i` (the paper's Fig. 4),
//! and the dense layers' GFLOP/s beside the machine's GEMM rate measured in
//! the same run.

use std::time::Instant;

use serde::Serialize;

use crate::{EngineError, Model, Profile, Rng};

/// What to run.
#[derive(Debug, Clone)]
pub struct PrefillBench {
    pub context: usize,
    pub chunk_tokens: usize,
    pub seed: u64,
}

/// The linear fit of chunk compute time against chunk index.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ChunkFit {
    pub a_ms: f64,
    pub b_ms: f64,
    /// Coefficient of determination of the fit.
    pub r2: f64,
}

/// The report (`--json` writes it as is).
#[derive(Debug, Clone, Serialize)]
pub struct PrefillReport {
    pub context: usize,
    pub chunk_tokens: usize,
    pub total_s: f64,
    pub tokens_per_s: f64,
    /// GFLOP/s of the dense layers inside the prefill.
    pub dense_gflops: f64,
    /// The device the prefill ran on, in words.
    pub device: String,
    /// Which GEMM `gemm_gflops` measures: our f32 kernel on the CPU,
    /// cuBLAS bf16 × bf16 → f32 on a GPU (the product the dense layers use).
    pub gemm_kind: String,
    /// Side of the square product `gemm_gflops` was measured on.
    pub gemm_size: usize,
    /// The GEMM rate of this device, measured in the same run on a large
    /// square product.
    pub gemm_gflops: f64,
    /// The GEMM rate at the model's own largest dense shape (chunk ×
    /// hidden → intermediate), also measured in this run.
    pub gemm_model_shape_gflops: f64,
    pub chunk_fit: ChunkFit,
    /// Compute time of each chunk, in index order.
    pub chunk_ms: Vec<f64>,
    /// Where the time went.
    pub profile: Profile,
}

/// Least-squares fit of `y = a + b·x` over `x = 0, 1, …`.
pub fn linear_fit(ys: &[f64]) -> (f64, f64, f64) {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return (ys.first().copied().unwrap_or(0.0), 0.0, 0.0);
    }
    let mx = (n - 1.0) / 2.0;
    let my = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mx;
        sxy += dx * (y - my);
        sxx += dx * dx;
    }
    let b = sxy / sxx;
    let a = my - b * mx;
    let ss_tot: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    let ss_res: f64 = ys
        .iter()
        .enumerate()
        .map(|(i, y)| (y - a - b * i as f64).powi(2))
        .sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        1.0
    };
    (a, b, r2)
}

/// Runs the benchmark. `progress` is called after each chunk with
/// (chunks done, chunks in all).
pub fn run(
    model: &Model,
    bench: &PrefillBench,
    mut progress: impl FnMut(usize, usize),
) -> Result<PrefillReport, EngineError> {
    let c = bench.chunk_tokens;
    if c == 0 || bench.context < c {
        return Err(EngineError::BadRequest(format!(
            "context ({}) must hold at least one chunk of {c} tokens",
            bench.context
        )));
    }
    model.check_fits(bench.context, 0)?;
    let n_chunks = bench.context / c;
    let mut rng = Rng::new(bench.seed);
    let vocab = model.config().vocab_size as u64;
    let tokens: Vec<u32> = (0..n_chunks * c).map(|_| rng.below(vocab) as u32).collect();

    // Warm up thread pools and caches on a throwaway sequence.
    let mut warm = model.new_cache();
    model.forward_no_logits(&mut warm, &tokens[..c])?;
    drop(warm);

    let mut cache = model.new_cache();
    let mut profile = Profile::default();
    let mut chunk_ms = Vec::with_capacity(n_chunks);
    let start = Instant::now();
    for (i, chunk) in tokens.chunks(c).enumerate() {
        let t = Instant::now();
        model.forward_profiled(&mut cache, chunk, &mut profile)?;
        chunk_ms.push(t.elapsed().as_secs_f64() * 1e3);
        progress(i + 1, n_chunks);
    }
    let total_s = start.elapsed().as_secs_f64();
    let (a, b, r2) = linear_fit(&chunk_ms);

    let cfg = model.config();
    let dev = model.device();
    let (gemm_kind, gemm_size, iters) = if dev.is_cpu() {
        ("f32", 1024, 8)
    } else {
        ("bf16", 8192, 20)
    };
    let gemm_rate = cake_kernels::device_gemm_gflops(dev, gemm_size, gemm_size, gemm_size, iters)?;
    let gemm_model_shape_gflops = cake_kernels::device_gemm_gflops(
        dev,
        c,
        cfg.hidden_size,
        cfg.intermediate_size,
        2 * iters,
    )?;
    Ok(PrefillReport {
        context: n_chunks * c,
        chunk_tokens: c,
        total_s,
        tokens_per_s: (n_chunks * c) as f64 / total_s,
        dense_gflops: profile.dense_flops / profile.dense_s.max(1e-12) / 1e9,
        device: dev.describe(),
        gemm_kind: gemm_kind.into(),
        gemm_size,
        gemm_gflops: gemm_rate,
        gemm_model_shape_gflops,
        chunk_fit: ChunkFit {
            a_ms: a,
            b_ms: b,
            r2,
        },
        chunk_ms,
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_a_line() {
        let ys: Vec<f64> = (0..10).map(|i| 3.0 + 0.5 * i as f64).collect();
        let (a, b, r2) = linear_fit(&ys);
        assert!((a - 3.0).abs() < 1e-9 && (b - 0.5).abs() < 1e-9 && (r2 - 1.0).abs() < 1e-9);
    }
}
