//! `out[m, n] = x[m, k] · w[n, k]ᵀ` for 16-bit weights (`packed.rs`).
//!
//! A few rows (decode: one per stream) are bound by reading `w`, so for
//! `m ≤ SMALL_ROWS` a kernel reads the 16-bit groups straight into
//! registers, widens them and multiplies, with no packed copy in between:
//! each weight byte comes from memory once, in order (row blocks past the
//! first [`MR`] rows read the same 64 columns again, from L2). More rows
//! go through the blocked GEMM (`gemm.rs`), which widens `w` while it
//! packs a panel and reuses it across row blocks.
//!
//! Both give the same bits: every output element is the chain
//! `acc = fma(x[i, p], w[j, p], acc)` for `p = 0, 1, …` from `+0.0`, and
//! widening is exact. So a row's result does not depend on `m`, on the
//! thread count or on the instruction set, and equals the f32 GEMM's on
//! f32 weights holding the same values.

use super::gemm::{MR, Weights, gemm};
use super::isa::{Isa, detect};
use super::packed::{LANES, PackedHalf, widen};

/// Groups of [`LANES`] columns one kernel call holds (64 columns, like
/// the GEMM's micro-kernel: enough independent chains to hide the fma
/// latency for a single row).
pub(crate) const GROUPS: usize = 4;

/// Most rows the streaming kernel takes (a decode batch); more go to the
/// blocked GEMM.
pub(crate) const SMALL_ROWS: usize = 16;

/// Below this many multiply-adds a call runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 18;

pub(crate) fn matmul_t_half(x: &[f32], w: &PackedHalf, out: &mut [f32], m: usize) {
    matmul_t_half_with(detect(), x, w, out, m);
}

pub(crate) fn matmul_t_half_with(isa: Isa, x: &[f32], w: &PackedHalf, out: &mut [f32], m: usize) {
    let (k, n) = (w.k, w.n);
    assert!(x.len() >= m * k && out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return;
    }
    if m > SMALL_ROWS {
        return gemm(isa, x, Weights::Half(w), out, m, k, n);
    }
    matmul_t_half_many_with(isa, x, &[w], &mut [out], m);
}

/// [`matmul_t_half`] of one input by several weights of the same `k`
/// (Q, K and V; gate and up): for `m ≤ SMALL_ROWS`, one parallel region
/// over the groups of all of them, so a decode step hands work to the
/// threads once per fused op rather than once per weight. Each group is
/// computed exactly as alone, so the bits are those of separate calls.
pub(crate) fn matmul_t_half_many(x: &[f32], ws: &[&PackedHalf], outs: &mut [&mut [f32]], m: usize) {
    matmul_t_half_many_with(detect(), x, ws, outs, m);
}

pub(crate) fn matmul_t_half_many_with(
    isa: Isa,
    x: &[f32],
    ws: &[&PackedHalf],
    outs: &mut [&mut [f32]],
    m: usize,
) {
    assert_eq!(ws.len(), outs.len());
    if ws.is_empty() || m == 0 {
        return;
    }
    let k = ws[0].k;
    assert!(ws.iter().all(|w| w.k == k) && x.len() >= m * k);
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert!(out.len() >= m * w.n);
    }
    if k == 0 || m > SMALL_ROWS {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            if w.n == 0 {
                continue;
            }
            if k == 0 {
                out[..m * w.n].fill(0.0);
            } else {
                gemm(isa, x, Weights::Half(w), out, m, k, w.n);
            }
        }
        return;
    }
    let total: usize = ws.iter().map(|w| w.groups()).sum();
    let macs: usize = ws.iter().map(|w| m * w.n * k).sum();
    let threads = if macs < PAR_MIN_MACS {
        1
    } else {
        rayon::current_num_threads().max(1)
    };
    // A few tasks per thread, so that uneven ones even out; a task stays
    // inside one weight.
    let per = total.div_ceil(4 * threads).max(1);
    let mut tasks: Vec<(usize, usize, usize)> = Vec::with_capacity(total.div_ceil(per) + ws.len());
    for (wi, w) in ws.iter().enumerate() {
        let groups = w.groups();
        let mut g0 = 0;
        while g0 < groups {
            let g1 = (g0 + per).min(groups);
            tasks.push((wi, g0, g1));
            g0 = g1;
        }
    }
    let optrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let task = |&(wi, g0, g1): &(usize, usize, usize)| {
        let (w, optr) = (ws[wi], optrs[wi]);
        let n = w.n;
        let mut g = g0;
        while g < g1 {
            let ng = if g1 - g >= GROUPS { GROUPS } else { 1 };
            for i in (0..m).step_by(MR) {
                let call = Small {
                    mr: MR.min(m - i),
                    ng,
                    k,
                    x: x[i * k..].as_ptr(),
                    w: w.group(g).as_ptr(),
                    bf16: w.bf16,
                    c: optr.at(i * n + g * LANES),
                    ldc: n,
                    ncols: (n - g * LANES).min(ng * LANES),
                };
                // SAFETY: x holds rows i..i+mr of k values; groups
                // g..g+ng of weight wi exist (each k·LANES values,
                // contiguous); the output columns g·LANES.. of those rows
                // of output wi belong to this task alone.
                unsafe { call.run(isa) };
            }
            g += ng;
        }
    };
    if tasks.len() == 1 {
        task(&tasks[0]);
    } else {
        super::team::for_each(tasks.len(), |i| task(&tasks[i]));
    }
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of the output, and the owning
// `&mut [f32]` is borrowed for the whole parallel section.
unsafe impl Send for OutPtr {}
// SAFETY: as above; the pointer itself is only copied.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `off` values in (a method, so closures capture the
    /// whole `Send` wrapper rather than its raw field). Formed with
    /// `wrapping_add`; callers pass offsets inside the output.
    fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

/// One kernel call: `c[i][..ncols] = Σ_p x[i·k + p] · w[..][p]` for
/// `i < mr ≤ MR`, over `ng` consecutive groups starting at `w`.
pub(crate) struct Small {
    pub mr: usize,
    pub ng: usize,
    pub k: usize,
    pub x: *const f32,
    pub w: *const u16,
    pub bf16: bool,
    pub c: *mut f32,
    pub ldc: usize,
    pub ncols: usize,
}

impl Small {
    /// # Safety
    /// `k ≥ 1`, `1 ≤ mr ≤ MR`, `ng` is 1 or [`GROUPS`]; `x` addresses `mr`
    /// rows of `k` values; `w` addresses `ng·k·LANES` values; `c`
    /// addresses `mr` rows of `ncols ≤ ng·LANES` values at stride `ldc`,
    /// not accessed by another thread.
    pub(crate) unsafe fn run(&self, isa: Isa) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller's guarantees are the kernel's; Isa::Avx512
            // is only chosen when the CPU has AVX-512F.
            Isa::Avx512 => unsafe { super::gemv_avx512::small(self) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; Isa::Fma only when the CPU has AVX2 + FMA.
            Isa::Fma => unsafe { self.run_fma() },
            // SAFETY: as above.
            _ => unsafe { self.run_portable() },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_fma(&self) {
        // SAFETY: forwarded from `run`.
        unsafe { self.run_portable() }
    }

    #[inline(always)]
    unsafe fn run_portable(&self) {
        let (k, ng) = (self.k, self.ng);
        // SAFETY: per `run`'s contract.
        let (x, w) = unsafe {
            (
                std::slice::from_raw_parts(self.x, self.mr * k),
                std::slice::from_raw_parts(self.w, ng * k * LANES),
            )
        };
        let mut acc = [[0.0f32; GROUPS * LANES]; MR];
        let mut wv = [0.0f32; GROUPS * LANES];
        for p in 0..k {
            for q in 0..ng {
                let src = &w[(q * k + p) * LANES..(q * k + p + 1) * LANES];
                for (d, &b) in wv[q * LANES..(q + 1) * LANES].iter_mut().zip(src) {
                    *d = widen(b, self.bf16);
                }
            }
            for (i, row) in acc.iter_mut().take(self.mr).enumerate() {
                let a = x[i * k + p];
                for (s, &b) in row.iter_mut().zip(&wv[..ng * LANES]) {
                    *s = a.mul_add(b, *s);
                }
            }
        }
        for (i, row) in acc.iter().take(self.mr).enumerate() {
            // SAFETY: row i of `c` holds ncols values per `run`'s contract.
            let crow =
                unsafe { std::slice::from_raw_parts_mut(self.c.add(i * self.ldc), self.ncols) };
            crow.copy_from_slice(&row[..self.ncols]);
        }
    }
}
