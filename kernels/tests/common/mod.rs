//! Shared fixtures for the kernel tests: a seeded generator and naive
//! references written straight from the definitions, in f64.
#![allow(dead_code)]

use cake_kernels::{Device, Tensor};

/// SplitMix64: tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }

    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(self.vec(n), shape, Device::Cpu).unwrap()
    }
}

pub fn t(data: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape, Device::Cpu).unwrap()
}

/// Largest |a - b| / (1 + |b|).
pub fn max_rel_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f64::max)
}

pub fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    let d = max_rel_diff(got, want);
    assert!(d <= tol, "{what}: max relative difference {d:e} > {tol:e}");
}

pub fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// `x[m, k] · w[n, k]ᵀ` in f64.
pub fn matmul_t(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                .sum();
        }
    }
    out
}

/// Causal grouped-query attention with the full score matrix, in f64.
/// `kv` is `[t, kv_heads, hd]` with `t ≥ q_pos0 + m`.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (m, heads, kv_heads, hd): (usize, usize, usize, usize),
    q_pos0: usize,
    scale: f32,
) -> Vec<f64> {
    let group = heads / kv_heads;
    let mut out = vec![0.0; m * heads * hd];
    for r in 0..m {
        let last = q_pos0 + r;
        for h in 0..heads {
            let g = h / group;
            let qv = &q[(r * heads + h) * hd..][..hd];
            let scores: Vec<f64> = (0..=last)
                .map(|j| {
                    let kj = &k[(j * kv_heads + g) * hd..][..hd];
                    qv.iter()
                        .zip(kj)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = e.iter().sum();
            let o = &mut out[(r * heads + h) * hd..][..hd];
            for (j, p) in e.iter().enumerate() {
                let vj = &v[(j * kv_heads + g) * hd..][..hd];
                for (o, &x) in o.iter_mut().zip(vj) {
                    *o += p / z * x as f64;
                }
            }
        }
    }
    out
}
