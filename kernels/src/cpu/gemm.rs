//! `out[m, n] = x[m, k] · w[n, k]ᵀ`, deterministic by construction.
//!
//! Every output element is one chain of fused multiply-adds in `k` order,
//! `acc = fma(x[i, p], w[j, p], acc)` from `acc = +0.0`, whatever the shape
//! of the call, the blocking, the thread count or the instruction set: when
//! a `k` block ends, the partial sum is stored in `out` and the next block
//! continues the chain from it. So row `i` of the result is bitwise the same
//! whether it is computed in a call with 1 row or 256, which the engine
//! needs (prefill in two calls must equal one call).
//!
//! Why not the `gemm` crate: its results depend on `m`. It switches to a
//! gemv kernel for one row (about 90% of a row's values then differ from
//! the same row computed in a 256-row call), to a horizontal kernel for
//! small products, and picks its `k` blocking from all three dimensions.
//! `matrixmultiply` is deterministic, but slower. Measured on the 2-core
//! Xeon (Cascade Lake, 2.5 GHz, AVX-512) that Cake is developed on, one
//! thread, best per-call CPU time (the machine was shared, so CPU time
//! rather than wall time), fresh output per call; GFLOP/s:
//!
//! | m × k × n        | this | gemm 0.19 (`x86-v4`) | matrixmultiply 0.3 |
//! |------------------|-----:|---------------------:|-------------------:|
//! | 256 × 256 × 256  | 122  | 107                  | 61                 |
//! | 256 × 256 × 1024 | 123  | 99                   | 65                 |
//! | 256 × 1024 × 256 | 121  | 89                   | 61                 |
//! | 512 × 256 × 768  | 118  | 111                  | 70                 |
//! | 512 × 1024 × 1024| 108  | 94                   | 61                 |
//! | 256 × 4096 × 4096| 96   | 66                   | 55                 |
//! | 512 × 4096 × 4096| 101  | 84                   | 60                 |
//! | 512 × 256 × 32000| 69   | 67                   | 49                 |
//! | 1 × 4096 × 4096  | 2.9  | 4.5                  | 0.9                |
//! | 1 × 256 × 32000  | 3.1  | 4.5                  | 1.0                |
//!
//! Single rows (decode) are memory-bound and ~1.5× slower than `gemm`'s
//! gemv: keeping each element's sum a chain in `k` order means reading 16
//! rows of `w` side by side to transpose them, which the prefetcher follows
//! worse than gemv's one row at a time. `cargo bench -p cake-kernels
//! --bench matmul` reruns the comparison (wall time, all threads).
//! Weights held in 16 bits avoid that: they are stored transposed once, at
//! load (`packed.rs`), a few rows stream them straight from memory
//! (`gemv.rs`), and this GEMM widens them while packing — the same chains,
//! so the same bits.
//!
//! Layout: the BLIS scheme. `w` is packed one `k` block at a time into
//! panels of [`NR`] columns (`buf[p][c] = w[j0 + c, pc + p]`, transposed in
//! registers); an [`MR`]×[`NR`] micro-kernel broadcasts `x` values and
//! keeps the tile of sums in 24 registers. Work is split into column blocks
//! (each packs its own part of `w`, so `w` is read once), then row blocks
//! when there are too few column blocks for the threads.

use std::cell::RefCell;

use super::isa::{Isa, detect};
use super::packed::{LANES, PackedHalf, widen};

/// Rows of `x` per micro-kernel call.
pub(crate) const MR: usize = 6;
/// Columns of `out` per micro-kernel call (four 16-lane vectors).
pub(crate) const NR: usize = 64;
/// Depth of one packed block of `w` (`KC × NR` floats stay in L2 while
/// every row block of the tile uses them).
const KC: usize = 256;
/// Widest column block of one task.
const NC_MAX: usize = 256;

/// Below this many multiply-adds a call runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 18;

pub(crate) fn matmul_t(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    matmul_t_with(detect(), x, w, out, m, k, n);
}

/// A raw output pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row, column) tiles of the output, and the
// owning `&mut [f32]` is borrowed for the whole parallel section.
unsafe impl Send for OutPtr {}
// SAFETY: as above; the pointer itself is only copied.
unsafe impl Sync for OutPtr {}

thread_local! {
    /// Packed panels of `w`, reused across calls on each thread.
    static PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn matmul_t_with(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert!(w.len() >= n * k);
    gemm(isa, x, Weights::F32(w), out, m, k, n);
}

/// The operand `w[n, k]` of a call: f32 rows, or 16-bit groups (see
/// `packed.rs`), widened to f32 while a panel is packed.
#[derive(Clone, Copy)]
pub(crate) enum Weights<'a> {
    F32(&'a [f32]),
    Half(&'a PackedHalf),
}

/// The blocked GEMM over either kind of `w` (whose values must cover
/// `[n, k]`).
pub(crate) fn gemm(
    isa: Isa,
    x: &[f32],
    w: Weights<'_>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert!(x.len() >= m * k && out.len() >= m * n);
    if let Weights::Half(h) = w {
        assert!(h.n == n && h.k == k);
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return;
    }
    let threads = if m * n * k < PAR_MIN_MACS {
        1
    } else {
        rayon::current_num_threads().max(1)
    };
    // Column blocks: at least two per thread where `n` allows, at most NC_MAX.
    let nc = n
        .div_ceil(2 * threads)
        .next_multiple_of(NR)
        .clamp(NR, NC_MAX);
    let col_blocks = n.div_ceil(nc);
    // Row blocks only when column blocks cannot keep the threads busy.
    let row_blocks = if col_blocks >= threads {
        1
    } else {
        threads.div_ceil(col_blocks).min(m.div_ceil(MR))
    };
    let mb = m.div_ceil(row_blocks).next_multiple_of(MR);
    let tasks = col_blocks * m.div_ceil(mb);
    let optr = OutPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let (cb, rb) = (t % col_blocks, t / col_blocks);
        let tile = Tile {
            rows: rb * mb..((rb + 1) * mb).min(m),
            cols: cb * nc..((cb + 1) * nc).min(n),
        };
        let job = Job {
            isa,
            x,
            w,
            out: optr,
            k,
            n,
        };
        PACK.with_borrow_mut(|buf| {
            // SAFETY: `tile` lies inside the [m, n] output, which `optr`
            // points to (length checked above) and which no other task
            // writes; x and w hold [m, k] and [n, k] values.
            unsafe { job.run_tile(&tile, buf) }
        });
    };
    if tasks == 1 {
        task(0);
    } else {
        super::team::for_each(tasks, task);
    }
}

/// One call's operands.
struct Job<'a> {
    isa: Isa,
    x: &'a [f32],
    w: Weights<'a>,
    out: OutPtr,
    k: usize,
    n: usize,
}

struct Tile {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

impl Job<'_> {
    /// Computes one output tile over the whole depth: for each `KC`-deep
    /// block, all the tile's panels of `w` are packed once and then used by
    /// every row block from L2.
    ///
    /// # Safety
    /// `out` points to a row-major `[_, n]` output that contains `tile`, no
    /// other thread accesses that tile meanwhile, and `x`/`w` are `[_, k]`
    /// matrices covering the tile's rows/columns.
    unsafe fn run_tile(&self, tile: &Tile, buf: &mut Vec<f32>) {
        let Job {
            isa,
            x,
            w,
            out,
            k,
            n,
        } = *self;
        let panels = tile.cols.len().div_ceil(NR);
        let need = NR * KC.min(k) * panels;
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        for pc in (0..k).step_by(KC) {
            let kb = KC.min(k - pc);
            let col = |p: usize| tile.cols.start + p * NR;
            for (p, dst) in buf.chunks_exact_mut(NR * kb).take(panels).enumerate() {
                pack_w(
                    isa,
                    w,
                    k,
                    col(p)..(col(p) + NR).min(tile.cols.end),
                    pc,
                    kb,
                    dst,
                );
            }
            let mut i = tile.rows.start;
            while i < tile.rows.end {
                let mr = MR.min(tile.rows.end - i);
                for p in 0..panels {
                    let j = col(p);
                    let call = Micro {
                        mr,
                        kb,
                        a: x[i * k + pc..].as_ptr(),
                        lda: k,
                        b: buf[p * NR * kb..].as_ptr(),
                        ldb: NR,
                        // SAFETY (of the offset): row i < m and column j < n,
                        // so the element lies inside the output.
                        c: unsafe { out.0.add(i * n + j) },
                        ldc: n,
                        first: pc == 0,
                        ncols: NR.min(tile.cols.end - j),
                    };
                    // SAFETY: `a` has mr rows of kb values at stride k (rows
                    // i..i+mr of x, columns pc..pc+kb); `b` has kb rows of NR
                    // packed values; `c` has mr rows of ncols values at
                    // stride n, all inside this task's tile.
                    unsafe { call.run(isa) };
                }
                i += mr;
            }
        }
    }
}

/// One micro-kernel call: `c[i][..ncols] (+)= Σ_p a[i·lda + p] · b[p·ldb + ..]`
/// for `i < mr ≤ MR`, `ncols ≤ NR`, continuing each element's fma chain
/// from `c` unless `first`.
pub(crate) struct Micro {
    pub mr: usize,
    pub kb: usize,
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub first: bool,
    pub ncols: usize,
}

impl Micro {
    /// # Safety
    /// `kb ≥ 1`; `a` addresses `mr` rows of `kb` values at stride `lda`; `b` addresses
    /// `kb` rows of `NR` values at stride `ldb` (all `NR` readable even when
    /// `ncols < NR`); `c` addresses `mr` rows of `ncols` values at stride
    /// `ldc`, not aliased by `a` or `b` nor accessed by another thread.
    pub(crate) unsafe fn run(&self, isa: Isa) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller's guarantees are the kernel's; Isa::Avx512
            // is only chosen when the CPU has AVX-512F.
            Isa::Avx512 => unsafe { super::gemm_avx512::micro(self) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; Isa::Fma is only chosen when the CPU has
            // AVX2 and FMA.
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
        for i in 0..self.mr {
            let mut acc = [0.0f32; NR];
            // SAFETY: row i of `a` and `c` and all of `b` are in bounds per
            // `run`'s contract.
            let (arow, crow, b) = unsafe {
                (
                    std::slice::from_raw_parts(self.a.add(i * self.lda), self.kb),
                    std::slice::from_raw_parts_mut(self.c.add(i * self.ldc), self.ncols),
                    std::slice::from_raw_parts(self.b, (self.kb - 1) * self.ldb + NR),
                )
            };
            if !self.first {
                acc[..self.ncols].copy_from_slice(crow);
            }
            for (p, &av) in arow.iter().enumerate() {
                for (s, &bv) in acc.iter_mut().zip(&b[p * self.ldb..p * self.ldb + NR]) {
                    *s = av.mul_add(bv, *s);
                }
            }
            crow.copy_from_slice(&acc[..self.ncols]);
        }
    }
}

/// Packs `w[cols, pc..pc+kb]` (at most [`NR`] columns) as one panel:
/// `dst[p·NR + c] = w[cols.start + c, pc + p]`, zero past the last column.
fn pack_w(
    isa: Isa,
    w: Weights<'_>,
    k: usize,
    cols: std::ops::Range<usize>,
    pc: usize,
    kb: usize,
    dst: &mut [f32],
) {
    match w {
        Weights::F32(w) => pack_w_f32(isa, w, k, cols, pc, kb, dst),
        Weights::Half(h) => pack_w_half(isa, h, cols, pc, kb, dst),
    }
}

fn pack_w_f32(
    isa: Isa,
    w: &[f32],
    k: usize,
    cols: std::ops::Range<usize>,
    pc: usize,
    kb: usize,
    dst: &mut [f32],
) {
    let (j0, nj) = (cols.start, cols.len());
    debug_assert!(nj <= NR && dst.len() == NR * kb);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && nj == NR {
        super::gemm_avx512::pack_panel(&w[j0 * k..(j0 + NR) * k], k, pc, kb, dst);
        return;
    }
    let _ = isa;
    for c in 0..NR {
        if c < nj {
            let row = &w[(j0 + c) * k + pc..(j0 + c) * k + pc + kb];
            for (p, &v) in row.iter().enumerate() {
                dst[p * NR + c] = v;
            }
        } else {
            for p in 0..kb {
                dst[p * NR + c] = 0.0;
            }
        }
    }
}

/// The same panel from 16-bit groups: each group's `k` steps are already
/// columns, so packing is a widening copy (no transpose). Columns past
/// `n` are the groups' zero padding, or zero.
fn pack_w_half(
    isa: Isa,
    w: &PackedHalf,
    cols: std::ops::Range<usize>,
    pc: usize,
    kb: usize,
    dst: &mut [f32],
) {
    debug_assert!(cols.start.is_multiple_of(LANES) && cols.len() <= NR);
    debug_assert!(dst.len() == NR * kb);
    let g0 = cols.start / LANES;
    for q in 0..NR / LANES {
        let g = g0 + q;
        if g * LANES >= cols.end {
            for p in 0..kb {
                dst[p * NR + q * LANES..p * NR + (q + 1) * LANES].fill(0.0);
            }
            continue;
        }
        let src = &w.group(g)[pc * LANES..(pc + kb) * LANES];
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 {
            super::gemv_avx512::widen_group(src, w.bf16, &mut dst[q * LANES..], NR, kb);
            continue;
        }
        let _ = isa;
        for (p, s) in src.chunks_exact(LANES).enumerate() {
            let d = &mut dst[p * NR + q * LANES..p * NR + (q + 1) * LANES];
            for (d, &b) in d.iter_mut().zip(s) {
                *d = widen(b, w.bf16);
            }
        }
    }
}
