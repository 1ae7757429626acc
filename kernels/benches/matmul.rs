//! `matmul_t` at the model's shapes, against the `gemm` crate and
//! `matrixmultiply` on the same inputs. Throughput is reported in
//! elements/s where one element is one flop, i.e. read "Gelem/s" as GFLOP/s.
//!
//! `cargo bench -p cake-kernels --bench matmul [-- FILTER]`
// Test code: a failed call should fail loudly.
#![allow(clippy::unwrap_used)]
// Calling the other crates' raw-pointer APIs; `unsafe` is allowed in this
// crate (`cake-kernels`), and each block says why it is sound.
#![allow(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use cake_kernels::{Device, Tensor, ops};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// (m, k, n): prefill chunks of 256 and 512 rows through the `small`
/// model's layers (hidden 256) and a 4096-wide model's, plus single-row
/// decode.
const SHAPES: &[(usize, usize, usize)] = &[
    (256, 256, 256),
    (256, 256, 1024),
    (256, 1024, 256),
    (512, 256, 768),
    (512, 1024, 1024),
    (256, 4096, 4096),
    (512, 4096, 4096),
    (512, 256, 32000),
    (1, 4096, 4096),
    (1, 256, 32000),
];

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.5) * 0.0625)
        .collect()
}

fn with_gemm(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
    // SAFETY: out is [m, n] (row stride n), x is [m, k] (row stride k), w is
    // [n, k] read as wᵀ [k, n] (row stride 1, column stride k); no aliasing.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn with_matrixmultiply(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    // SAFETY: as above, with matrixmultiply's (row stride, column stride)
    // pairs: x (k, 1), wᵀ (1, k), out (n, 1).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            x.as_ptr(),
            k as isize,
            1,
            w.as_ptr(),
            1,
            k as isize,
            0.0,
            out.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

fn matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul_t");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &(m, k, n) in SHAPES {
        let (xv, wv) = (data(m * k, 1), data(n * k, 2));
        let x = Tensor::from_vec(xv.clone(), &[m, k], Device::Cpu).unwrap();
        let w = Tensor::from_vec(wv.clone(), &[n, k], Device::Cpu).unwrap();
        let id = format!("{m}x{k}x{n}");
        g.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        g.bench_function(BenchmarkId::new("cake", &id), |b| {
            b.iter(|| black_box(ops::matmul_t(&x, &w).unwrap()))
        });
        // Each call gets a fresh output, as `matmul_t` allocates its own:
        // for large outputs the page faults are part of the cost.
        g.bench_function(BenchmarkId::new("gemm", &id), |b| {
            b.iter(|| {
                let mut out = vec![0.0f32; m * n];
                with_gemm(&xv, &wv, &mut out, m, k, n);
                black_box(out)
            })
        });
        g.bench_function(BenchmarkId::new("matrixmultiply", &id), |b| {
            b.iter(|| {
                let mut out = vec![0.0f32; m * n];
                with_matrixmultiply(&xv, &wv, &mut out, m, k, n);
                black_box(out)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, matmul);
criterion_main!(benches);
