//! A matmul weight held in its 16-bit type (bf16 or IEEE half), laid out
//! for the kernels that read it.
//!
//! Why a layout of its own: every output element of `x · wᵀ` is one fma
//! chain in `k` order (see `gemm.rs`), so the vector lanes of a kernel are
//! neighbouring *rows* of `w`, and a row-major `w` has to be transposed on
//! the fly (what the f32 GEMM does while packing). Weights never change, so
//! this layout transposes them once, at load: groups of [`LANES`] rows,
//! each group stored column by column,
//!
//! `bits[(g·k + p)·LANES + c] = w[g·LANES + c, p]`,
//!
//! with the last group padded with zero rows. A decode step then streams
//! each group front to back, 32 contiguous bytes per `k` step, and widening
//! to f32 is exact, so the sums are the same bits as for f32 weights
//! holding the same values.

/// Rows of `w` per group: one 16-lane f32 vector.
pub(crate) const LANES: usize = 16;

/// bf16 or f16 bits → f32 (exact).
#[inline(always)]
pub(crate) fn widen(b: u16, bf16: bool) -> f32 {
    crate::tensor::half_to_f32(b, bf16)
}

/// `w[n, k]` in 16 bits, grouped as the module says.
#[derive(Debug, Clone)]
pub(crate) struct PackedHalf {
    pub bits: Vec<u16>,
    /// bfloat16 when true, IEEE half otherwise.
    pub bf16: bool,
    pub n: usize,
    pub k: usize,
}

impl PackedHalf {
    /// Regroups row-major `w[n, k]` bits.
    pub(crate) fn from_rows(rows: &[u16], bf16: bool, n: usize, k: usize) -> PackedHalf {
        debug_assert_eq!(rows.len(), n * k);
        let groups = n.div_ceil(LANES);
        let mut bits = vec![0u16; groups * k * LANES];
        for (r, row) in rows.chunks_exact(k.max(1)).take(n).enumerate() {
            let (g, c) = (r / LANES, r % LANES);
            let base = g * k * LANES + c;
            for (p, &b) in row.iter().enumerate() {
                bits[base + p * LANES] = b;
            }
        }
        PackedHalf { bits, bf16, n, k }
    }

    /// Groups of [`LANES`] rows (the last one padded).
    pub(crate) fn groups(&self) -> usize {
        self.n.div_ceil(LANES)
    }

    /// Group `g`: `k` steps of [`LANES`] values.
    pub(crate) fn group(&self, g: usize) -> &[u16] {
        &self.bits[g * self.k * LANES..(g + 1) * self.k * LANES]
    }

    /// Row `r` of `w`, widened (an embedding lookup of a tied table).
    pub(crate) fn row_f32(&self, r: usize, out: &mut Vec<f32>) {
        let (g, c) = (r / LANES, r % LANES);
        let grp = self.group(g);
        out.extend((0..self.k).map(|p| widen(grp[p * LANES + c], self.bf16)));
    }

    /// All of `w`, widened, row-major.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.n * self.k);
        for r in 0..self.n {
            self.row_f32(r, &mut out);
        }
        out
    }

    /// Bytes held (what a pass over the weight reads).
    pub(crate) fn bytes(&self) -> usize {
        2 * self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regrouping_keeps_every_value() {
        let (n, k) = (37, 5);
        let rows: Vec<u16> = (0..n * k).map(|v| (v as u16) << 4).collect();
        let p = PackedHalf::from_rows(&rows, true, n, k);
        assert_eq!(p.groups(), 3);
        let want: Vec<f32> = rows.iter().map(|&b| widen(b, true)).collect();
        assert_eq!(p.to_f32(), want);
        // Padding rows are zero.
        assert!(
            p.group(2)[LANES - 1..]
                .iter()
                .step_by(LANES)
                .all(|&b| b == 0)
        );
    }
}
