//! CPU backend: rayon's thread count; the GEMM, matrix-vector and attention
//! regions run on a spinning team (`team.rs`). Hot loops (GEMM, attention)
//! have AVX-512 kernels with portable twins that give identical bits; see
//! `isa.rs`.

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
mod exp;
mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_avx512;
mod gemv;
#[cfg(target_arch = "x86_64")]
mod gemv_avx512;
pub(crate) mod isa;
mod packed;
mod team;

pub(crate) use attention::{AttnCall, AttnShape, KB as KEY_BLOCK, attention_many, pack_key_blocks};
pub(crate) use gemm::matmul_t;
pub(crate) use gemv::{matmul_t_half, matmul_t_half_many};
pub(crate) use packed::PackedHalf;

use rayon::prelude::*;

/// Rows per parallel task for cheap elementwise/row ops.
const ROW_GRAIN: usize = 16;

pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, d: usize, out: &mut [f32]) {
    if d == 0 {
        return;
    }
    out.par_chunks_mut(d * ROW_GRAIN)
        .zip(x.par_chunks(d * ROW_GRAIN))
        .for_each(|(o, xi)| {
            for (orow, xrow) in o.chunks_mut(d).zip(xi.chunks(d)) {
                let ss: f32 = xrow.iter().map(|v| v * v).sum::<f32>() / d as f32;
                let inv = 1.0 / (ss + eps).sqrt();
                for ((o, &v), &g) in orow.iter_mut().zip(xrow).zip(w) {
                    *o = v * inv * g;
                }
            }
        });
}

pub(crate) fn rope(x: &mut [f32], heads: usize, hd: usize, pos0: usize, inv_freq: &[f32]) {
    let half = hd / 2;
    let row = heads * hd;
    if row == 0 {
        return;
    }
    x.par_chunks_mut(row * ROW_GRAIN)
        .enumerate()
        .for_each(|(c, rows)| {
            // cos then sin for one position; one buffer per ROW_GRAIN rows.
            let mut cs = vec![0.0f32; 2 * half];
            let (cos, sin) = cs.split_at_mut(half);
            for (i, xr) in rows.chunks_mut(row).enumerate() {
                // Exact for positions below 2^24, like the f32 positions
                // transformers multiplies by the same frequencies.
                let pos = (pos0 + c * ROW_GRAIN + i) as f32;
                for ((c, s), f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
                    (*s, *c) = (pos * f).sin_cos();
                }
                for h in xr.chunks_mut(hd) {
                    let (lo, hi) = h.split_at_mut(half);
                    for (((a, b), c), s) in lo.iter_mut().zip(hi).zip(&*cos).zip(&*sin) {
                        let (x0, x1) = (*a, *b);
                        *a = x0 * c - x1 * s;
                        *b = x1 * c + x0 * s;
                    }
                }
            }
        });
}

pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(4096)
        .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
}

pub(crate) fn add_inplace(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096)
        .zip(y.par_chunks(4096))
        .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(a, b)| *a += b));
}

pub(crate) fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests;
