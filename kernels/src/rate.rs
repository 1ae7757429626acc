//! The machine's f32 GEMM rate, for benchmarks to print beside their own.

use std::time::Instant;

use crate::{Device, Tensor, ops};

/// Measures [`ops::matmul_t`] on `x[m, k] · w[n, k]ᵀ` over `iters` timed
/// calls (after one untimed warm-up call) and returns GFLOP/s, counting
/// `2·m·n·k` flops per call. Returns 0 when any argument is 0.
///
/// `cake bench prefill` prints this beside the dense layers' rate, so it
/// times exactly the kernel the model uses, on the same thread pool.
pub fn gemm_gflops(m: usize, k: usize, n: usize, iters: usize) -> f64 {
    if m == 0 || k == 0 || n == 0 || iters == 0 {
        return 0.0;
    }
    let (Ok(x), Ok(w)) = (filled(&[m, k], 1), filled(&[n, k], 2)) else {
        return 0.0;
    };
    // The shapes agree by construction, so the calls cannot fail; an error
    // would show as a rate of 0 rather than a panic.
    if ops::matmul_t(&x, &w).is_err() {
        return 0.0;
    }
    let t = Instant::now();
    for _ in 0..iters {
        if let Ok(out) = ops::matmul_t(&x, &w) {
            std::hint::black_box(out);
        }
    }
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    2.0 * (m * n * k) as f64 * iters as f64 / secs / 1e9
}

/// A tensor of small, varied values (no zeros, no denormals).
fn filled(shape: &[usize], seed: usize) -> crate::Result<Tensor> {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.5) * 0.0625)
        .collect();
    Tensor::from_vec(data, shape, Device::Cpu)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_a_positive_rate() {
        assert!(super::gemm_gflops(8, 16, 8, 2) > 0.0);
        assert_eq!(super::gemm_gflops(0, 16, 8, 2), 0.0);
    }
}
