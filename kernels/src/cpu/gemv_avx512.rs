//! AVX-512 twins of the 16-bit weight pieces in `gemv.rs` and `gemm.rs`:
//! same results, bit for bit (widening is exact; each output element is
//! the same fma chain).

use std::arch::x86_64::*;

use super::gemm::MR;
use super::gemm_avx512::lanes;
use super::gemv::{GROUPS, Small};
use super::packed::LANES;

const _: () = assert!(LANES == 16, "one group is one 16-lane vector");

/// 16 bf16 (or f16) values at `p`, widened to f32.
///
/// # Safety
/// The CPU has AVX-512F; `p` addresses 16 readable values.
#[inline(always)]
unsafe fn load16<const BF16: bool>(p: *const u16) -> __m512 {
    // SAFETY: per the contract; unaligned loads are allowed.
    unsafe {
        let h = _mm256_loadu_si256(p as *const __m256i);
        if BF16 {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            _mm512_cvtph_ps(h)
        }
    }
}

/// # Safety
/// The CPU has AVX-512F, and `s` satisfies [`Small::run`]'s contract.
pub(crate) unsafe fn small(s: &Small) {
    debug_assert!(s.mr >= 1 && s.mr <= MR && (s.ng == 1 || s.ng == GROUPS));
    macro_rules! pick {
        ($bf:expr, $($r:literal)*) => {
            match (s.mr, s.ng == GROUPS) {
                $(
                    ($r, true) => small_tile::<$r, GROUPS, $bf>(s),
                    ($r, false) => small_tile::<$r, 1, $bf>(s),
                )*
                _ => unreachable!("mr is 1..=MR"),
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        if s.bf16 {
            pick!(true, 1 2 3 4 5 6)
        } else {
            pick!(false, 1 2 3 4 5 6)
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn small_tile<const R: usize, const G: usize, const BF16: bool>(s: &Small) {
    let k = s.k;
    let mut acc = [[_mm512_setzero_ps(); G]; R];
    for p in 0..k {
        // SAFETY: group q's step p lies inside the ng·k·LANES values at w;
        // x has R rows of k values.
        unsafe {
            let wv: [__m512; G] =
                std::array::from_fn(|q| load16::<BF16>(s.w.add((q * k + p) * LANES)));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*s.x.add(i * k + p));
                for (a, w) in row.iter_mut().zip(wv) {
                    *a = _mm512_fmadd_ps(av, w, *a);
                }
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (q, v) in row.iter().enumerate() {
            let m = lanes(s.ncols.saturating_sub(q * LANES));
            // SAFETY: masked lanes are row i's first ncols values; an
            // all-zero mask touches no memory.
            unsafe { _mm512_mask_storeu_ps(s.c.wrapping_add(i * s.ldc + q * LANES), m, *v) };
        }
    }
}

/// Widens one group's `kb` steps (`src`, `kb·LANES` values) into a GEMM
/// panel: `dst[p·ld + c] = src[p·LANES + c]`.
pub(crate) fn widen_group(src: &[u16], bf16: bool, dst: &mut [f32], ld: usize, kb: usize) {
    assert!(src.len() >= kb * LANES && (kb == 0 || dst.len() >= (kb - 1) * ld + LANES));
    // SAFETY: only called when Isa::Avx512 was detected; bounds checked above.
    unsafe {
        if bf16 {
            widen_group_avx512::<true>(src, dst, ld, kb)
        } else {
            widen_group_avx512::<false>(src, dst, ld, kb)
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn widen_group_avx512<const BF16: bool>(src: &[u16], dst: &mut [f32], ld: usize, kb: usize) {
    for p in 0..kb {
        // SAFETY: step p's 16 values are inside src, and dst[p·ld..+16]
        // inside dst, per the assertion in `widen_group`.
        unsafe {
            let v = load16::<BF16>(src.as_ptr().add(p * LANES));
            _mm512_storeu_ps(dst.as_mut_ptr().add(p * ld), v);
        }
    }
}
