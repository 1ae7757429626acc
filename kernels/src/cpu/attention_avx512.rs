//! AVX-512 twins of the attention helpers in `attention.rs` (same bits).

use std::arch::x86_64::*;

use super::attention::{KB, Rows};
use super::exp::{avx512::exp16, exp};
use super::gemm::MR;
use super::gemm_avx512::{lanes, transpose16};

const _: () = assert!(KB == 64, "a key block is four 16-lane vectors");

/// `kt[d·KB + j] = rows[j][d]` for `j < rows.len() ≤ KB`, `d < hd`;
/// `hd` is a multiple of 16.
pub(crate) fn pack_kt(rows: &[&[f32]], hd: usize, kt: &mut [f32]) {
    assert!(hd.is_multiple_of(16) && rows.len() <= KB && kt.len() >= hd * KB);
    assert!(rows.iter().all(|r| r.len() >= hd));
    // SAFETY: only called once Isa::Avx512 was detected; bounds checked above.
    unsafe { pack_kt_avx512(rows, hd, kt) }
}

#[target_feature(enable = "avx512f")]
unsafe fn pack_kt_avx512(rows: &[&[f32]], hd: usize, kt: &mut [f32]) {
    for j0 in (0..rows.len()).step_by(16) {
        let n = 16.min(rows.len() - j0);
        for d0 in (0..hd).step_by(16) {
            let mut r: [__m512; 16] = std::array::from_fn(|q| {
                if q < n {
                    // SAFETY: row j0+q has at least hd ≥ d0 + 16 values.
                    unsafe { _mm512_loadu_ps(rows[j0 + q].as_ptr().add(d0)) }
                } else {
                    _mm512_setzero_ps()
                }
            });
            transpose16(&mut r);
            for (t, v) in r.iter().enumerate() {
                // SAFETY: (d0 + t)·KB + j0 + 16 ≤ hd·KB ≤ kt.len().
                unsafe { _mm512_storeu_ps(kt.as_mut_ptr().add((d0 + t) * KB + j0), *v) };
            }
        }
    }
}

/// See `attention::softmax_tile`; the caller checked the lengths.
pub(crate) fn softmax_tile(rows: Rows<'_>) {
    // SAFETY: only called once Isa::Avx512 was detected.
    unsafe { softmax_tile_avx512(rows) }
}

/// Done in stages across the tile's vectors, so that their dependency
/// chains (max, then exp, then sums) overlap.
#[target_feature(enable = "avx512f")]
fn softmax_tile_avx512(rows: Rows<'_>) {
    let Rows {
        p,
        nk,
        max,
        sum,
        acc,
    } = rows;
    let mr = nk.len();
    let hd = acc.len() / mr.max(1);
    let mask = |i: usize, q: usize| lanes(nk[i].saturating_sub(16 * q));
    // SAFETY (every load and store below): row i of p is p[i·KB..][..KB]
    // with KB = 64, row i of sum is sum[16·i..][..16], row i of acc is
    // acc[hd·i..][..hd] walked in 16-value steps with the tail masked.
    let pp = p.as_mut_ptr();
    let load = |i: usize, q: usize| unsafe { _mm512_loadu_ps(pp.add(i * KB + 16 * q)) };
    let mut new_max = [0.0f32; MR];
    for i in 0..mr {
        if nk[i] > 0 {
            let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
            for q in 0..4 {
                mv = _mm512_mask_max_ps(mv, mask(i, q), mv, load(i, q));
            }
            new_max[i] = max[i].max(_mm512_reduce_max_ps(mv));
        }
    }
    let mut corr = [1.0f32; MR];
    for i in 0..mr {
        if nk[i] > 0 {
            corr[i] = exp(max[i] - new_max[i]);
            max[i] = new_max[i];
        }
    }
    for i in 0..mr {
        let e: [__m512; 4] = if nk[i] == 0 {
            [_mm512_setzero_ps(); 4]
        } else {
            let nm = _mm512_set1_ps(new_max[i]);
            std::array::from_fn(|q| {
                _mm512_maskz_mov_ps(mask(i, q), exp16(_mm512_sub_ps(load(i, q), nm)))
            })
        };
        for (q, v) in e.iter().enumerate() {
            unsafe { _mm512_storeu_ps(pp.add(i * KB + 16 * q), *v) };
        }
        if nk[i] == 0 {
            continue;
        }
        let t = _mm512_add_ps(_mm512_add_ps(e[0], e[1]), _mm512_add_ps(e[2], e[3]));
        let cv = _mm512_set1_ps(corr[i]);
        unsafe {
            let l = sum.as_mut_ptr().add(16 * i);
            _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), cv, t));
        }
        // Multiplying by 1 is exact: skipping it changes no bits.
        if corr[i] == 1.0 {
            continue;
        }
        for d0 in (0..hd).step_by(16) {
            let m = lanes(hd - d0);
            unsafe {
                let a = acc.as_mut_ptr().add(i * hd + d0);
                _mm512_mask_storeu_ps(a, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a), cv));
            }
        }
    }
}
