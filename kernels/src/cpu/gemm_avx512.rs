//! AVX-512 twins of the portable GEMM pieces in `gemm.rs`: same results,
//! bit for bit (each output element is the same fma chain).

use std::arch::x86_64::*;

use super::gemm::{MR, Micro, NR};

const _: () = assert!(NR == 64, "the kernel holds four 16-lane vectors per row");

/// Mask of the first `n` (clamped to 16) lanes.
#[inline(always)]
pub(crate) fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// # Safety
/// The CPU has AVX-512F, and `m` satisfies [`Micro::run`]'s contract.
pub(crate) unsafe fn micro(m: &Micro) {
    debug_assert!(m.mr >= 1 && m.mr <= MR);
    // SAFETY: forwarded from the caller.
    unsafe {
        match m.mr {
            1 => tile::<1>(m),
            2 => tile::<2>(m),
            3 => tile::<3>(m),
            4 => tile::<4>(m),
            5 => tile::<5>(m),
            _ => tile::<6>(m),
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize>(m: &Micro) {
    let mask: [__mmask16; 4] = std::array::from_fn(|v| lanes(m.ncols.saturating_sub(16 * v)));
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    // Pointers past the tile's last column are formed with wrapping_add
    // and only used under an all-zero mask, which touches no memory.
    if !m.first {
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                // SAFETY: masked lanes are the row's first ncols values,
                // inside the tile per the caller's contract.
                *a =
                    unsafe { _mm512_maskz_loadu_ps(mask[v], m.c.wrapping_add(i * m.ldc + 16 * v)) };
            }
        }
    }
    let (mut a, mut b) = (m.a, m.b);
    for _ in 0..m.kb {
        // SAFETY: b walks kb rows of NR values, a walks kb columns of R rows.
        unsafe {
            let bv = [
                _mm512_loadu_ps(b),
                _mm512_loadu_ps(b.add(16)),
                _mm512_loadu_ps(b.add(32)),
                _mm512_loadu_ps(b.add(48)),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(i * m.lda));
                for (s, bvv) in row.iter_mut().zip(bv) {
                    *s = _mm512_fmadd_ps(av, bvv, *s);
                }
            }
            a = a.add(1);
            b = b.add(m.ldb);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, s) in row.iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { _mm512_mask_storeu_ps(m.c.wrapping_add(i * m.ldc + 16 * v), mask[v], *s) };
        }
    }
}

/// Packs 64 rows of `w` (`rows = w[j0..j0 + 64, ..]`, row length `k`),
/// columns `pc..pc + kb`, as `dst[p * NR + c] = rows[c][pc + p]`, with
/// 16×16 in-register transposes.
pub(crate) fn pack_panel(rows: &[f32], k: usize, pc: usize, kb: usize, dst: &mut [f32]) {
    assert!(rows.len() >= NR * k && pc + kb <= k && dst.len() >= kb * NR);
    // SAFETY: only called when Isa::Avx512 was detected; bounds checked above.
    unsafe { pack_panel_avx512(rows, k, pc, kb, dst) }
}

#[target_feature(enable = "avx512f")]
unsafe fn pack_panel_avx512(rows: &[f32], k: usize, pc: usize, kb: usize, dst: &mut [f32]) {
    for c0 in (0..NR).step_by(16) {
        for p0 in (0..kb).step_by(16) {
            let np = 16.min(kb - p0);
            let mut r: [__m512; 16] = std::array::from_fn(|q| {
                // SAFETY: row c0+q < 64 starts at (c0+q)·k; the np loaded
                // values pc+p0.. end at or before pc+kb ≤ k.
                unsafe {
                    _mm512_maskz_loadu_ps(lanes(np), rows.as_ptr().add((c0 + q) * k + pc + p0))
                }
            });
            transpose16(&mut r);
            for (t, v) in r.iter().take(np).enumerate() {
                // SAFETY: (p0+t)·NR + c0 + 16 ≤ kb·NR ≤ dst.len().
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add((p0 + t) * NR + c0), *v) };
            }
        }
    }
}

/// In-register transpose of a 16×16 block (`r[i]` is row `i`).
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn transpose16(r: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let pd = _mm512_castps_pd;
    let ps = _mm512_castpd_ps;
    for g in 0..4 {
        let (a0, a1, b0, b1) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        r[4 * g] = ps(_mm512_unpacklo_pd(pd(a0), pd(b0)));
        r[4 * g + 1] = ps(_mm512_unpackhi_pd(pd(a0), pd(b0)));
        r[4 * g + 2] = ps(_mm512_unpacklo_pd(pd(a1), pd(b1)));
        r[4 * g + 3] = ps(_mm512_unpackhi_pd(pd(a1), pd(b1)));
    }
    // r[4g + c] now holds, in 128-bit lane l, column 4l + c of rows 4g..4g+4.
    for h in 0..2 {
        for c in 0..4 {
            let (a, b) = (r[8 * h + c], r[8 * h + 4 + c]);
            t[8 * h + c] = _mm512_shuffle_f32x4::<0x88>(a, b);
            t[8 * h + 4 + c] = _mm512_shuffle_f32x4::<0xdd>(a, b);
        }
    }
    for c in 0..8 {
        r[c] = _mm512_shuffle_f32x4::<0x88>(t[c], t[8 + c]);
        r[8 + c] = _mm512_shuffle_f32x4::<0xdd>(t[c], t[8 + c]);
    }
}
