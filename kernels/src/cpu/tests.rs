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

/// 16-bit weights (bf16 bits cut from `data`, or f16 bits) and the f32
/// values they hold.
fn half_weights(n: usize, k: usize, seed: u32, bf16: bool) -> (Vec<u16>, Vec<f32>) {
    let raw = data(n * k, seed);
    let bits: Vec<u16> = raw
        .iter()
        .map(|v| {
            if bf16 {
                (v.to_bits() >> 16) as u16
            } else {
                half::f16::from_f32(*v).to_bits()
            }
        })
        .collect();
    let vals = bits
        .iter()
        .map(|&b| crate::tensor::half_to_f32(b, bf16))
        .collect();
    (bits, vals)
}

#[test]
fn half_weights_give_the_f32_bits_on_every_path() {
    use super::gemv::matmul_t_half_with;
    use super::packed::PackedHalf;
    // m ≤ 16 takes the streaming kernel, more rows the blocked GEMM; n not
    // a multiple of 16 pads the last group; k past KC splits the chain.
    for (i, &(m, k, n)) in [
        (1, 1, 1),
        (1, 300, 129),
        (3, 64, 64),
        (6, 513, 200),
        (7, 300, 129),
        (16, 70, 100),
        (17, 70, 100),
        (64, 257, 70),
        (2, 17, 1000),
    ]
    .iter()
    .enumerate()
    {
        for bf16 in [true, false] {
            let x = data(m * k, i as u32);
            let (hbits, vals) = half_weights(n, k, 50 + i as u32, bf16);
            let packed = PackedHalf::from_rows(&hbits, bf16, n, k);
            let mut want = vec![0.0; m * n];
            matmul_t_with(Isa::Portable, &x, &vals, &mut want, m, k, n);
            for isa in supported() {
                let mut got = vec![f32::NAN; m * n];
                matmul_t_half_with(isa, &x, &packed, &mut got, m);
                assert_eq!(bits(&got), bits(&want), "{isa:?} {m}x{k}x{n} bf16={bf16}");
            }
        }
    }
}

#[test]
fn fused_half_weights_give_the_bits_of_separate_calls() {
    use super::gemv::{matmul_t_half_many_with, matmul_t_half_with};
    use super::packed::PackedHalf;
    // Q, K, V-like shapes (one wide, two narrow, a padded group); m ≤ 16
    // shares one parallel region, m > 16 falls back to one GEMM each.
    let (k, ns) = (576, [576usize, 192, 200]);
    for m in [1, 5, 8, 16, 17] {
        let x = data(m * k, 7 + m as u32);
        let packed: Vec<PackedHalf> = ns
            .iter()
            .enumerate()
            .map(|(j, &n)| {
                let (hbits, _) = half_weights(n, k, 90 + j as u32, true);
                PackedHalf::from_rows(&hbits, true, n, k)
            })
            .collect();
        let refs: Vec<&PackedHalf> = packed.iter().collect();
        for isa in supported() {
            let mut bufs: Vec<Vec<f32>> = ns.iter().map(|&n| vec![f32::NAN; m * n]).collect();
            let mut outs: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            matmul_t_half_many_with(isa, &x, &refs, &mut outs, m);
            for (j, w) in packed.iter().enumerate() {
                let mut want = vec![0.0; m * w.n];
                matmul_t_half_with(Isa::Portable, &x, w, &mut want, m);
                assert_eq!(bits(&bufs[j]), bits(&want), "{isa:?} m={m} weight {j}");
            }
        }
    }
}
