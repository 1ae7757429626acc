//! `matmul_t` against a naive reference, and its determinism guarantees.
#![allow(clippy::unwrap_used)] // test code: a failed call should fail loudly

mod common;

use cake_kernels::ops::matmul_t;
use common::{Rng, assert_close, bits, t};
use proptest::prelude::*;

fn check(m: usize, k: usize, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.tensor(&[m, k]);
    let w = rng.tensor(&[n, k]);
    let got = matmul_t(&x, &w).unwrap();
    assert_eq!(got.shape(), [m, n]);
    let want = common::matmul_t(x.as_slice().unwrap(), w.as_slice().unwrap(), m, k, n);
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
