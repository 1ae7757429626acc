//! `exp` for the attention softmax, written once as a sequence of IEEE
//! operations and run either one value at a time or sixteen at a time with
//! AVX-512: both give the same bits. (`f32::exp` comes from the platform's
//! libm, whose results we cannot reproduce in vector code.)
//!
//! Cephes' `expf` scheme: `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-6
//! polynomial for `eʳ`, and `2ⁿ` built in the exponent bits. Error ≤ 2 ulp
//! over the range softmax uses (`x ≤ 0`); inputs below [`EXP_MIN`] give 0.

/// Below this, `eˣ` is under `f32::MIN_POSITIVE` and we return 0.
pub(crate) const EXP_MIN: f32 = -87.0;
const EXP_MAX: f32 = 88.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `eˣ`, bit-identical to [`avx512::exp16`] lane by lane.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    let n = (xc * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, xc);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = P[0];
    for c in &P[1..] {
        p = p.mul_add(r, *c);
    }
    let r2 = r * r;
    let y = p.mul_add(r2, r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let v = y * scale;
    // NaN fails `x >= EXP_MIN` and so becomes 0, as in the vector code.
    if x >= EXP_MIN { v } else { 0.0 }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// Sixteen lanes of [`exp`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn exp16(x: __m512) -> __m512 {
        let xc = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(EXP_MIN)),
            _mm512_set1_ps(EXP_MAX),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), xc);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
        let mut p = _mm512_set1_ps(P[0]);
        for c in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        ));
        let v = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
        let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(EXP_MIN));
        _mm512_maskz_mov_ps(keep, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_libm() {
        let mut worst = 0.0f64;
        let mut x = -90.0f32;
        while x <= 10.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            if want > f32::MIN_POSITIVE as f64 * 4.0 {
                worst = worst.max(((got - want) / want).abs());
            } else {
                assert!(got <= f32::MIN_POSITIVE as f64 * 4.0, "exp({x}) = {got}");
            }
            x += 0.000_37;
        }
        assert!(
            worst < 3.0 * f32::EPSILON as f64,
            "worst relative error {worst}"
        );
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_matches_scalar_bitwise() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let xs: Vec<f32> = (0..4096)
            .map(|i| -100.0 + i as f32 * 0.0271)
            .chain([f32::NEG_INFINITY, -0.0, 0.0, 88.5, -87.0, -86.99])
            .chain(std::iter::repeat_n(0.0, 10))
            .collect();
        for c in xs.chunks_exact(16) {
            let mut got = [0.0f32; 16];
            // SAFETY: avx512f was detected above; `c` and `got` hold 16 f32s.
            unsafe {
                let v = avx512::exp16(std::arch::x86_64::_mm512_loadu_ps(c.as_ptr()));
                std::arch::x86_64::_mm512_storeu_ps(got.as_mut_ptr(), v);
            }
            for (x, g) in c.iter().zip(got) {
                assert_eq!(g.to_bits(), exp(*x).to_bits(), "exp({x})");
            }
        }
    }
}
