//! Causal attention of one 256-token prefill chunk (and one decode token)
//! at the end of a 2K, 8K and 32K context, at the `small` model's shape:
//! 4 query heads, 2 KV heads, head dim 64, cache in 256-token chunks.
//! Throughput counts the flops of QKᵀ and PV (elements = flops).
//!
//! `cargo bench -p cake-kernels --bench attention [-- FILTER]`
#![allow(clippy::unwrap_used)] // test code: a failed call should fail loudly

use std::hint::black_box;
use std::time::Duration;

use cake_kernels::{Device, Tensor, ops};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = 64;
const CHUNK: usize = 256;

fn tensor(n: usize, seed: usize, shape: &[usize]) -> Tensor {
    let v = (0..n)
        .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.5) * 0.05)
        .collect();
    Tensor::from_vec(v, shape, Device::Cpu).unwrap()
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for ctx in [2048usize, 8192, 32768] {
        let chunks: Vec<(Tensor, Tensor)> = (0..ctx / CHUNK)
            .map(|i| {
                let n = CHUNK * KV_HEADS * HD;
                let shape = [CHUNK, KV_HEADS, HD];
                (tensor(n, 2 * i, &shape), tensor(n, 2 * i + 1, &shape))
            })
            .collect();
        let ks: Vec<&Tensor> = chunks.iter().map(|c| &c.0).collect();
        let vs: Vec<&Tensor> = chunks.iter().map(|c| &c.1).collect();
        for m in [CHUNK, 1] {
            let q = tensor(m * HEADS * HD, 99, &[m, HEADS, HD]);
            let q_pos0 = ctx - m;
            let keys_seen = (q_pos0 as f64 + (m as f64 + 1.0) / 2.0) * m as f64;
            g.throughput(Throughput::Elements(
                (4.0 * keys_seen * (HEADS * HD) as f64) as u64,
            ));
            let name = if m == 1 { "decode" } else { "prefill256" };
            g.bench_function(BenchmarkId::new(name, ctx), |b| {
                b.iter(|| black_box(ops::attention(&q, q_pos0, &ks, &vs, 0.125).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, attention);
criterion_main!(benches);
