//! Every instruction set this CPU runs against the portable kernels: same
//! bits.

use super::attention::{AttnShape, attention_with};
use super::gemm::matmul_t_with;
use super::isa::{Isa, supported};

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn gemm_fast_paths_match_portable() {
    for (i, &(m, k, n)) in [
        (1, 1, 1),
        (7, 300, 129),
        (13, 64, 64),
        (64, 513, 200),
        (3, 17, 5),
        (5, 999, 192),
        (300, 257, 700),
    ]
    .iter()
    .enumerate()
    {
        let x = data(m * k, i as u32);
        let w = data(n * k, 100 + i as u32);
        let mut port = vec![1.0; m * n];
        matmul_t_with(Isa::Portable, &x, &w, &mut port, m, k, n);
        for isa in supported() {
            let mut fast = vec![0.0; m * n];
            matmul_t_with(isa, &x, &w, &mut fast, m, k, n);
            assert_eq!(bits(&fast), bits(&port), "{isa:?} {m}x{k}x{n}");
        }
    }
}

#[test]
fn attention_fast_paths_match_portable() {
    for (i, &(m, n_heads, kv_heads, hd, q_pos0)) in [
        (1, 4, 2, 64, 300),
        (20, 4, 2, 64, 77),
        (9, 2, 1, 128, 0),
        (5, 4, 4, 32, 64),
        (3, 2, 1, 24, 10),
    ]
    .iter()
    .enumerate()
    {
        let total = q_pos0 + m;
        let q = data(m * n_heads * hd, i as u32);
        let k = data(total * kv_heads * hd, 10 + i as u32);
        let v = data(total * kv_heads * hd, 20 + i as u32);
        let cut = total / 3 * kv_heads * hd;
        let (keys, values) = ([&k[..cut], &k[cut..]], [&v[..cut], &v[cut..]]);
        let s = AttnShape {
            m,
            n_heads,
            kv_heads,
            hd,
            q_pos0,
        };
        let mut port = vec![0.0; q.len()];
        attention_with(Isa::Portable, &q, s, &keys, &values, 0.3, &mut port);
        for isa in supported() {
            let mut fast = vec![0.0; q.len()];
            attention_with(isa, &q, s, &keys, &values, 0.3, &mut fast);
            assert_eq!(bits(&fast), bits(&port), "{isa:?} case {i}");
        }
    }
}
