//! `matmul_t` against a naive reference, and its determinism guarantees.
#![allow(clippy::unwrap_used)] // test code: a failed call should fail loudly

use crate::common::{Rng, assert_close, bits, t};
use cake_kernels::ops::matmul_t;
use proptest::prelude::*;

fn check(m: usize, k: usize, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.tensor(&[m, k]);
    let w = rng.tensor(&[n, k]);
    let got = matmul_t(&x, &w).unwrap();
    assert_eq!(got.shape(), [m, n]);
    let want = crate::common::matmul_t(x.as_slice().unwrap(), w.as_slice().unwrap(), m, k, n);
    // Inputs in [-1, 1): each sum has k terms of size ≤ 1, rounding errors
    // grow like √k·ε on average and k·ε at worst.
    let tol = 4.0 * (k as f64) * f32::EPSILON as f64;
    assert_close(
        got.as_slice().unwrap(),
        &want,
        tol,
        &format!("matmul {m}x{k}x{n}"),
    );
}

#[test]
fn odd_shapes_match_naive() {
    for (i, &(m, k, n)) in [
        (1, 1, 1),
        (1, 7, 3),
        (3, 5, 2),
        (7, 13, 65),
        (13, 31, 129),
        (37, 100, 63),
        (70, 17, 200),
        (5, 1, 9),
    ]
    .iter()
    .enumerate()
    {
        check(m, k, n, i as u64);
    }
}

#[test]
fn single_row_and_large_k() {
    check(1, 4096, 70, 11);
    check(1, 300, 1000, 12);
    check(9, 3000, 67, 13);
}

#[test]
fn model_shape_runs_in_parallel_paths() {
    // Big enough to split into column and row blocks across threads.
    check(64, 256, 320, 21);
    check(130, 96, 64, 22);
}

#[test]
fn zero_depth_gives_zeros_and_bad_shapes_are_errors() {
    let x = t(vec![], &[3, 0]);
    let w = t(vec![], &[2, 0]);
    assert_eq!(matmul_t(&x, &w).unwrap().to_vec().unwrap(), vec![0.0; 6]);
    let x = t(vec![0.0; 6], &[2, 3]);
    let w = t(vec![0.0; 8], &[2, 4]);
    assert!(matmul_t(&x, &w).is_err());
    assert!(matmul_t(&t(vec![0.0; 6], &[6]), &w).is_err());
}

/// The documented definition: one fma chain per element, in `k` order.
fn fma_chain(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc = x[i * k + p].mul_add(w[j * k + p], acc);
            }
            out[i * n + j] = acc;
        }
    }
    out
}

#[test]
fn equals_the_fma_chain_bitwise() {
    let mut rng = Rng::new(5);
    for &(m, k, n) in &[(1, 600, 130), (8, 257, 64), (37, 513, 100)] {
        let x = rng.vec(m * k);
        let w = rng.vec(n * k);
        let got = matmul_t(&t(x.clone(), &[m, k]), &t(w.clone(), &[n, k])).unwrap();
        assert_eq!(
            bits(got.as_slice().unwrap()),
            bits(&fma_chain(&x, &w, m, k, n))
        );
    }
}

#[test]
fn matmul_rows_independent_of_m() {
    let (k, n) = (300, 130);
    let mut rng = Rng::new(7);
    let x = rng.vec(256 * k);
    let w = t(rng.vec(n * k), &[n, k]);
    let full = matmul_t(&t(x.clone(), &[256, k]), &w)
        .unwrap()
        .to_vec()
        .unwrap();
    for &m in &[1usize, 37, 255] {
        for start in [0, 3.min(256 - m), 256 - m] {
            let part = t(x[start * k..(start + m) * k].to_vec(), &[m, k]);
            let got = matmul_t(&part, &w).unwrap().to_vec().unwrap();
            assert_eq!(
                bits(&got),
                bits(&full[start * n..(start + m) * n]),
                "rows {start}..{} computed with m = {m}",
                start + m
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_shape_matches_naive(m in 1usize..40, k in 1usize..300, n in 1usize..150, seed: u64) {
        check(m, k, n, seed);
    }

    #[test]
    fn any_row_split_is_bitwise_equal(m in 2usize..50, cut in 1usize..49, k in 1usize..200, n in 1usize..140, seed: u64) {
        let cut = cut.min(m - 1);
        let mut rng = Rng::new(seed);
        let x = rng.vec(m * k);
        let w = t(rng.vec(n * k), &[n, k]);
        let whole = matmul_t(&t(x.clone(), &[m, k]), &w).unwrap().to_vec().unwrap();
        let a = matmul_t(&t(x[..cut * k].to_vec(), &[cut, k]), &w).unwrap().to_vec().unwrap();
        let b = matmul_t(&t(x[cut * k..].to_vec(), &[m - cut, k]), &w).unwrap().to_vec().unwrap();
        prop_assert_eq!(bits(&whole), bits(&[a, b].concat()));
    }
}

/// bf16 weights of random values: the bits, and the same values as f32.
fn bf16_weights(rng: &mut Rng, n: usize, k: usize) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = rng
        .vec(n * k)
        .iter()
        .map(|v| (v.to_bits() >> 16) as u16)
        .collect();
    let vals = bits
        .iter()
        .map(|&b| f32::from_bits((b as u32) << 16))
        .collect();
    (bits, vals)
}

#[test]
fn bf16_weight_rows_independent_of_m_and_threads() {
    use cake_kernels::{DType, Device, Tensor};
    // SmolLM2's shapes, scaled down: k past one KC block, n not a
    // multiple of the kernels' 16 or 64 columns.
    let (k, n) = (576, 200);
    let mut rng = Rng::new(9);
    let (hbits, vals) = bf16_weights(&mut rng, n, k);
    let w16 = Tensor::weight_half(hbits, true, &[n, k], Device::Cpu).unwrap();
    assert_eq!(w16.dtype(), DType::Bf16);
    assert_eq!(w16.to_vec().unwrap(), vals);
    let w32 = t(vals, &[n, k]);
    let x = rng.vec(64 * k);
    let run = |threads: usize, m: usize, w: &Tensor| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            matmul_t(&t(x[..m * k].to_vec(), &[m, k]), w)
                .unwrap()
                .to_vec()
                .unwrap()
        })
    };
    // The reference: all 64 rows, f32 weights, two threads.
    let full = run(2, 64, &w32);
    for m in [1usize, 3, 8, 64] {
        for threads in [1, 2] {
            let got = run(threads, m, &w16);
            assert_eq!(
                bits(&got),
                bits(&full[..m * n]),
                "bf16 weights, m = {m}, {threads} thread(s)"
            );
        }
    }
}

#[test]
fn half_weights_feed_matmul_and_embedding_only() {
    use cake_kernels::{Device, Tensor, ops};
    let (n, k) = (20, 8);
    let mut rng = Rng::new(3);
    let (hbits, vals) = bf16_weights(&mut rng, n, k);
    let w = Tensor::weight_half(hbits, true, &[n, k], Device::Cpu).unwrap();
    let rows = ops::embedding(&w, &[19, 0, 7]).unwrap().to_vec().unwrap();
    let want: Vec<f32> = [19, 0, 7]
        .iter()
        .flat_map(|&r| vals[r * k..(r + 1) * k].to_vec())
        .collect();
    assert_eq!(rows, want);
    assert_eq!(w.rows(7, 8).unwrap().to_vec().unwrap(), vals[7 * k..8 * k]);
    assert_eq!(w.stored_bytes(), 2 * 32 * k, "two groups of 16 rows");
    let mut other = t(vec![0.0; n * k], &[n, k]);
    assert!(ops::add_inplace(&mut other, &w).is_err());
    assert!(Tensor::weight_half(vec![0; 8], true, &[8], Device::Cpu).is_err());
}
