//! Causal attention of a block of queries over a chunked KV cache, tiled.
//!
//! Work is split into tasks of (kv head, block of query rows); a task's
//! queries are all the heads of its group for its rows, so each K/V block is
//! read once per task, not once per query. Keys are visited in blocks of
//! [`KB`] *absolute* positions (block `b` is positions `64b..64b+64`, however
//! the cache is cut into chunks): each block of `K` is packed transposed
//! (or read so packed from the caller's [`KeyBlocks`](crate::KeyBlocks),
//! which holds the cache's whole blocks that way, so a decode step packs
//! only its last block), scores for up to [`MR`] queries come from the GEMM
//! micro-kernel, and an
//! online softmax folds the block into each query's running max, sum and
//! output.
//!
//! Determinism: what a query computes depends only on its own vector, its
//! position and the keys/values — never on which other queries share the
//! call or the tile, on the chunk boundaries, or on the thread schedule.
//! Scores are fma chains over the head dimension; per block, the max is
//! over the query's visible keys, `p = exp(s − max)` (the exp in `exp.rs`),
//! the sum is kept in 16 lanes (`l = l·c + ((p₀+p₁)+(p₂+p₃))` over the four
//! 16-key quarters) and the output by fma chains over keys in position order.
//! Keys a query may not see get `p = 0`, which leaves its sums unchanged
//! exactly (for finite values). So prefill split into any calls, and over
//! any chunking of the cache, gives the same bits.

use super::exp::exp;
use super::gemm::{MR, Micro, NR};
use super::isa::{Isa, detect};

/// Key positions per block; equal to the micro-kernel's width.
pub(crate) const KB: usize = NR;
/// Query rows per task at most (times the group size in query vectors).
const QB: usize = 128;

#[derive(Clone, Copy)]
pub(crate) struct AttnShape {
    pub m: usize,
    pub n_heads: usize,
    pub kv_heads: usize,
    pub hd: usize,
    pub q_pos0: usize,
}

/// One sequence's attention in [`attention_many`]: its queries, shape and
/// KV cache chunks.
pub(crate) struct AttnCall<'a> {
    pub q: &'a [f32],
    pub s: AttnShape,
    pub keys: &'a [&'a [f32]],
    pub values: &'a [&'a [f32]],
    /// The first `kt_blocks` key blocks already packed, block `b` of kv
    /// head `g` at `kt[(b·kv_heads + g)·hd·KB..]` as [`pack_key_blocks`]
    /// lays them out (empty: none).
    pub kt: &'a [f32],
    pub kt_blocks: usize,
}

/// [`attention`] of several sequences (a decode batch: one query row each,
/// each over its own cache) as one parallel region over all their tasks,
/// so the threads share the whole batch's work instead of each sequence's
/// few kv heads. Each sequence's bits are those of a call of its own.
pub(crate) fn attention_many(calls: &[AttnCall<'_>], scale: f32, outs: &mut [&mut [f32]]) {
    attention_many_with(detect(), calls, scale, outs);
}

/// The KV cache as chunks of `[t_i, kv_heads, hd]` rows, addressed by
/// absolute position.
struct Kv<'a> {
    keys: &'a [&'a [f32]],
    values: &'a [&'a [f32]],
    /// Start position of each chunk, plus the total at the end.
    starts: Vec<usize>,
    row: usize,
    /// Key blocks packed beforehand ([`AttnCall::kt`]).
    kt: &'a [f32],
    kt_blocks: usize,
}

impl<'a> Kv<'a> {
    /// The cache's chunks of `row` values a position, with no blocks
    /// packed beforehand.
    fn new(keys: &'a [&'a [f32]], values: &'a [&'a [f32]], row: usize) -> Kv<'a> {
        let mut starts = Vec::with_capacity(keys.len() + 1);
        let mut total = 0;
        for k in keys {
            starts.push(total);
            total += k.len() / row;
        }
        starts.push(total);
        Kv {
            keys,
            values,
            starts,
            row,
            kt: &[],
            kt_blocks: 0,
        }
    }

    /// Positions covered.
    fn total(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    /// The `nk` key rows of kv head `g` (`hd` values from `h0 = g·hd`) at
    /// positions `kb0..kb0 + nk`, into `krows`; the chunk holding them all
    /// (`None`: they straddle chunks).
    fn key_rows(
        &self,
        kb0: usize,
        nk: usize,
        h0: usize,
        hd: usize,
        krows: &mut [&'a [f32]; KB],
    ) -> Option<usize> {
        let c = self.chunk_of(kb0);
        if kb0 + nk <= self.starts[c + 1] {
            let off = (kb0 - self.starts[c]) * self.row;
            let keys = self.keys[c];
            for (j, r) in krows[..nk].iter_mut().enumerate() {
                *r = &keys[off + j * self.row + h0..][..hd];
            }
            Some(c)
        } else {
            self.for_rows(kb0, nk, |j, k, _| krows[j] = &k[h0..h0 + hd]);
            None
        }
    }

    /// Index of the chunk holding position `pos`.
    fn chunk_of(&self, pos: usize) -> usize {
        self.starts.partition_point(|&s| s <= pos) - 1
    }

    /// Calls `f(i, k_row, v_row)` for positions `start + i`, `i < n`; rows
    /// are whole `[kv_heads, hd]` rows.
    fn for_rows(&self, start: usize, n: usize, mut f: impl FnMut(usize, &'a [f32], &'a [f32])) {
        let mut c = self.chunk_of(start);
        for i in 0..n {
            let pos = start + i;
            while pos >= self.starts[c + 1] {
                c += 1;
            }
            let off = (pos - self.starts[c]) * self.row;
            f(
                i,
                &self.keys[c][off..off + self.row],
                &self.values[c][off..off + self.row],
            );
        }
    }
}

/// Output pointer shared by tasks writing disjoint (row, head) vectors.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only the output vectors of its own rows and
// heads; the `&mut [f32]` they live in is borrowed for the parallel section.
unsafe impl Send for OutPtr {}
// SAFETY: as above; the pointer itself is only copied.
unsafe impl Sync for OutPtr {}

/// One call of [`attention_many_with`] (the tests compare instruction sets).
#[cfg(test)]
pub(crate) fn attention_with(
    isa: Isa,
    q: &[f32],
    s: AttnShape,
    keys: &[&[f32]],
    values: &[&[f32]],
    scale: f32,
    out: &mut [f32],
) {
    let call = AttnCall {
        q,
        s,
        keys,
        values,
        kt: &[],
        kt_blocks: 0,
    };
    attention_many_with(isa, &[call], scale, &mut [out]);
}

/// One sequence's part of a parallel region: its cache, its tasks'
/// query-row block size, and where its output goes.
struct Seq<'a> {
    call: &'a AttnCall<'a>,
    kv: Kv<'a>,
    qb: usize,
    out: OutPtr,
}

pub(crate) fn attention_many_with(
    isa: Isa,
    calls: &[AttnCall<'_>],
    scale: f32,
    outs: &mut [&mut [f32]],
) {
    assert_eq!(calls.len(), outs.len());
    let threads = rayon::current_num_threads().max(1);
    let mut seqs = Vec::with_capacity(calls.len());
    // (sequence, task within it), and the work of all of them.
    let mut tasks: Vec<(usize, usize)> = Vec::new();
    let mut work = 0usize;
    for (call, out) in calls.iter().zip(outs.iter_mut()) {
        let AttnShape {
            m,
            n_heads,
            kv_heads,
            hd,
            q_pos0,
        } = call.s;
        assert!(call.q.len() == m * n_heads * hd && out.len() == call.q.len());
        if out.is_empty() {
            continue;
        }
        let kv = Kv {
            kt: call.kt,
            kt_blocks: call.kt_blocks,
            ..Kv::new(call.keys, call.values, kv_heads * hd)
        };
        assert!(kv.total() >= q_pos0 + m);
        assert!(
            call.kt_blocks * KB <= kv.total()
                && call.kt.len() >= call.kt_blocks * kv_heads * hd * KB
        );
        // Enough tasks to balance the causal triangle over the threads.
        let per_head = (2 * threads).div_ceil(kv_heads);
        let qb = m.div_ceil(per_head).clamp(1, QB);
        let n = m.div_ceil(qb) * kv_heads;
        tasks.extend((0..n).map(|t| (seqs.len(), t)));
        work += m * n_heads * (q_pos0 + m) * hd;
        seqs.push(Seq {
            call,
            kv,
            qb,
            out: OutPtr(out.as_mut_ptr()),
        });
    }
    let task = |i: usize| {
        let (j, t) = tasks[i];
        let sq = &seqs[j];
        let s = sq.call.s;
        let (g, b) = (t % s.kv_heads, t / s.kv_heads);
        let rows = b * sq.qb..((b + 1) * sq.qb).min(s.m);
        let mut task = Task::new(isa, sq.call.q, s, g, rows, scale);
        task.run(&sq.kv);
        // SAFETY: the task's vectors lie inside its sequence's output
        // (checked above) and belong to no other task.
        unsafe { task.finish(sq.out) };
    };
    if tasks.len() == 1 || work < 1 << 16 {
        (0..tasks.len()).for_each(task);
    } else {
        super::team::for_each(tasks.len(), task);
    }
}

/// One task's queries (rows × the heads of one group) and their running
/// softmax state.
struct Task {
    isa: Isa,
    s: AttnShape,
    g: usize,
    group: usize,
    rows: std::ops::Range<usize>,
    /// Scaled queries, vector `v = (row − rows.start)·group + head − g·group`.
    q: Vec<f32>,
    max: Vec<f32>,
    /// Softmax denominators, 16 lanes per vector.
    sum: Vec<f32>,
    acc: Vec<f32>,
    /// `K` block transposed: `kt[d·KB + j]`.
    kt: Vec<f32>,
    /// Where this block's transposed `K` is read: `kt`, or the block
    /// packed beforehand.
    kt_at: *const f32,
    /// `V` block, one row of `vstride` (`hd` rounded up to `NR`) values per key.
    vb: Vec<f32>,
    vstride: usize,
    /// Where this block's `V` rows are read: `vb`, or the cache itself
    /// (first row pointer and row stride) when the block sits in one chunk
    /// and `hd` is a multiple of `NR`.
    v_at: (*const f32, usize),
    /// Scores, then probabilities, of one tile: `MR × KB`.
    sp: Vec<f32>,
}

impl Task {
    fn new(
        isa: Isa,
        q: &[f32],
        s: AttnShape,
        g: usize,
        rows: std::ops::Range<usize>,
        scale: f32,
    ) -> Task {
        let hd = s.hd;
        let group = s.n_heads / s.kv_heads;
        let nv = rows.len() * group;
        let mut qs = Vec::with_capacity(nv * hd);
        for r in rows.clone() {
            let base = (r * s.n_heads + g * group) * hd;
            qs.extend(q[base..base + group * hd].iter().map(|x| x * scale));
        }
        let vstride = hd.next_multiple_of(NR);
        Task {
            isa,
            s,
            g,
            group,
            rows,
            q: qs,
            max: vec![f32::NEG_INFINITY; nv],
            sum: vec![0.0; nv * 16],
            acc: vec![0.0; nv * hd],
            kt: vec![0.0; hd * KB],
            kt_at: std::ptr::null(),
            vb: vec![0.0; KB * vstride],
            vstride,
            v_at: (std::ptr::null(), 0),
            sp: vec![0.0; MR * KB],
        }
    }

    /// Position of query vector `v`.
    fn pos(&self, v: usize) -> usize {
        self.s.q_pos0 + self.rows.start + v / self.group
    }

    fn run(&mut self, kv: &Kv<'_>) {
        let nv = self.max.len();
        let last = self.pos(nv - 1);
        for kb0 in (0..=last).step_by(KB) {
            let nk = KB.min(last + 1 - kb0);
            self.pack_block(kv, kb0, nk);
            // Vectors are in position order: skip those that see no key here.
            let before = kb0.saturating_sub(self.s.q_pos0 + self.rows.start);
            let mut v0 = (before * self.group).min(nv);
            while v0 < nv {
                let mr = MR.min(nv - v0);
                self.tile(v0, mr, kb0);
                v0 += mr;
            }
        }
    }

    /// Prepares keys `kb0..kb0 + nk` of this kv head: `K` transposed
    /// (`kt_at`: the block packed beforehand, or `kt`, zero past `nk`), and
    /// `v_at` pointing at their `V` rows (copied into `vb` unless they can
    /// be read in place).
    fn pack_block<'a>(&mut self, kv: &Kv<'a>, kb0: usize, nk: usize) {
        let hd = self.s.hd;
        let h0 = self.g * hd;
        let mut krows: [&'a [f32]; KB] = [&[]; KB];
        let in_one = kv.key_rows(kb0, nk, h0, hd, &mut krows);
        match in_one {
            Some(c) if hd.is_multiple_of(NR) => {
                let off = (kb0 - kv.starts[c]) * kv.row;
                self.v_at = (
                    kv.values[c][off + h0..off + (nk - 1) * kv.row + h0 + hd].as_ptr(),
                    kv.row,
                );
            }
            _ => {
                let (vb, vstride) = (&mut self.vb, self.vstride);
                kv.for_rows(kb0, nk, |j, _, v| {
                    vb[j * vstride..j * vstride + hd].copy_from_slice(&v[h0..h0 + hd]);
                });
                self.v_at = (self.vb.as_ptr(), vstride);
            }
        }
        let b = kb0 / KB;
        if b < kv.kt_blocks {
            let at = (b * self.s.kv_heads + self.g) * hd * KB;
            self.kt_at = kv.kt[at..at + hd * KB].as_ptr();
            return;
        }
        transpose_keys(self.isa, &krows[..nk], hd, &mut self.kt);
        self.kt_at = self.kt.as_ptr();
    }

    /// Folds key block `kb0..` into query vectors `v0..v0 + mr`.
    fn tile(&mut self, v0: usize, mr: usize, kb0: usize) {
        let hd = self.s.hd;
        let qk = Micro {
            mr,
            kb: hd,
            a: self.q[v0 * hd..].as_ptr(),
            lda: hd,
            b: self.kt_at,
            ldb: KB,
            c: self.sp.as_mut_ptr(),
            ldc: KB,
            first: true,
            ncols: KB,
        };
        // SAFETY: q holds mr rows of hd values from v0; kt_at addresses hd
        // rows of KB = NR values (`kt`, or a block checked in pack_block);
        // sp is MR × KB and mr ≤ MR.
        unsafe { qk.run(self.isa) };
        // Keys each vector may see in this block (vectors are in position
        // order, so the last sees the most).
        let mut nk = [0usize; MR];
        for (i, n) in nk[..mr].iter_mut().enumerate() {
            *n = (self.pos(v0 + i) + 1).saturating_sub(kb0).min(KB);
        }
        let nk_max = nk[mr - 1];
        softmax_tile(
            self.isa,
            Rows {
                p: &mut self.sp[..mr * KB],
                nk: &nk[..mr],
                max: &mut self.max[v0..v0 + mr],
                sum: &mut self.sum[v0 * 16..(v0 + mr) * 16],
                acc: &mut self.acc[v0 * hd..(v0 + mr) * hd],
            },
        );
        let mut d0 = 0;
        while d0 < hd {
            let pv = Micro {
                mr,
                kb: nk_max,
                a: self.sp.as_ptr(),
                lda: KB,
                b: self.v_at.0.wrapping_add(d0),
                ldb: self.v_at.1,
                c: self.acc[v0 * hd + d0..].as_mut_ptr(),
                ldc: hd,
                first: false,
                ncols: NR.min(hd - d0),
            };
            // SAFETY: sp holds mr rows of KB ≥ nk_max probabilities; v_at
            // addresses nk ≥ nk_max rows of ≥ d0 + NR readable values (vb
            // rows are vstride long; rows in the cache are read in place
            // only when hd is a multiple of NR, checked in pack_block);
            // acc holds mr rows of hd values from v0, columns d0..d0 + ncols.
            unsafe { pv.run(self.isa) };
            d0 += NR;
        }
    }

    /// Writes `acc / sum` for each query vector.
    ///
    /// # Safety
    /// `out` points to the `[m, n_heads, hd]` output and no other thread
    /// writes this task's vectors.
    unsafe fn finish(&self, out: OutPtr) {
        let hd = self.s.hd;
        for (v, acc) in self.acc.chunks_exact(hd).enumerate() {
            let r = self.rows.start + v / self.group;
            let h = self.g * self.group + v % self.group;
            let l = hsum16(&self.sum[v * 16..(v + 1) * 16]);
            let inv = 1.0 / l;
            // SAFETY: r < m, h < n_heads: the vector is inside the output.
            let o = unsafe {
                std::slice::from_raw_parts_mut(out.0.add((r * self.s.n_heads + h) * hd), hd)
            };
            for (o, a) in o.iter_mut().zip(acc) {
                *o = a * inv;
            }
        }
    }
}

/// `kt[d·KB + j] = rows[j][d]` for `j < rows.len() ≤ KB`, zero past
/// `rows.len()`: a block of keys transposed for the score tile.
fn transpose_keys(isa: Isa, rows: &[&[f32]], hd: usize, kt: &mut [f32]) {
    if rows.len() < KB {
        kt[..hd * KB].fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && hd.is_multiple_of(16) {
        super::attention_avx512::pack_kt(rows, hd, kt);
        return;
    }
    let _ = isa;
    for (j, k) in rows.iter().enumerate() {
        for (d, &x) in k.iter().enumerate() {
            kt[d * KB + j] = x;
        }
    }
}

/// Appends key blocks `from..to` of a cache held as chunks of `[t_i,
/// kv_heads, hd]` rows to `out`, transposed as the score tile reads them:
/// block `b`, kv head `g` is `hd × KB` values `[d][j]` (key `j` of the
/// block), the blocks one after the other, each block's heads in order.
/// Only whole blocks: the chunks must cover `to·KB` positions.
pub(crate) fn pack_key_blocks(
    keys: &[&[f32]],
    kv_heads: usize,
    hd: usize,
    blocks: std::ops::Range<usize>,
    out: &mut Vec<f32>,
) {
    let kv = Kv::new(keys, keys, kv_heads * hd);
    assert!(blocks.end * KB <= kv.total());
    let isa = detect();
    let per = hd * KB;
    let at = out.len();
    out.resize(at + blocks.len() * kv_heads * per, 0.0);
    let mut krows: [&[f32]; KB] = [&[]; KB];
    for (i, b) in blocks.enumerate() {
        for g in 0..kv_heads {
            kv.key_rows(b * KB, KB, g * hd, hd, &mut krows);
            let o = at + (i * kv_heads + g) * per;
            transpose_keys(isa, &krows, hd, &mut out[o..o + per]);
        }
    }
}

/// The online-softmax state of a tile's query vectors for one key block.
pub(crate) struct Rows<'a> {
    /// Scores in, probabilities out: `KB` per vector, the first `nk[i]`
    /// valid; probabilities past `nk[i]` are 0.
    pub p: &'a mut [f32],
    pub nk: &'a [usize],
    /// Running max per vector.
    pub max: &'a mut [f32],
    /// Running denominators, 16 lanes per vector.
    pub sum: &'a mut [f32],
    /// Running outputs, `hd` per vector.
    pub acc: &'a mut [f32],
}

/// Folds a block's scores into each vector's state: new max, `p = exp(s −
/// max)`, and the sums and outputs rescaled by `exp(old max − new max)`
/// (the output's `Σ p·v` is added afterwards by the caller). A vector with
/// `nk = 0` keeps its state and gets `p = 0`.
fn softmax_tile(isa: Isa, rows: Rows<'_>) {
    let mr = rows.nk.len();
    assert!(
        mr <= MR
            && rows.p.len() == mr * KB
            && rows.max.len() == mr
            && rows.sum.len() == mr * 16
            && rows.acc.len().is_multiple_of(mr.max(1))
            && rows.nk.iter().all(|&n| n <= KB)
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => super::attention_avx512::softmax_tile(rows),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Fma is only chosen when the CPU has AVX2 and FMA.
        Isa::Fma => unsafe { softmax_tile_fma(rows) },
        _ => softmax_tile_portable(rows),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_tile_fma(rows: Rows<'_>) {
    softmax_tile_portable(rows);
}

#[inline(always)]
fn softmax_tile_portable(rows: Rows<'_>) {
    let mr = rows.nk.len();
    let hd = rows.acc.len() / mr.max(1);
    for (i, &nk) in rows.nk.iter().enumerate() {
        let p = &mut rows.p[i * KB..(i + 1) * KB];
        if nk == 0 {
            p.fill(0.0);
            continue;
        }
        let max = rows.max[i];
        // The max is exact in any order, so the vector code may reduce it
        // its own way.
        let new_max = max.max(p[..nk].iter().copied().fold(f32::NEG_INFINITY, f32::max));
        let corr = exp(max - new_max);
        rows.max[i] = new_max;
        for (j, x) in p.iter_mut().enumerate() {
            *x = if j < nk { exp(*x - new_max) } else { 0.0 };
        }
        for (l, s) in rows.sum[i * 16..(i + 1) * 16].iter_mut().enumerate() {
            let t = (p[l] + p[16 + l]) + (p[32 + l] + p[48 + l]);
            *s = s.mul_add(corr, t);
        }
        // Multiplying by 1 is exact: skipping it changes no bits.
        if corr != 1.0 {
            for a in &mut rows.acc[i * hd..(i + 1) * hd] {
                *a *= corr;
            }
        }
    }
}

/// Sum of 16 lanes by halving: the order the vector code would use.
fn hsum16(x: &[f32]) -> f32 {
    let mut t = [0.0f32; 16];
    t.copy_from_slice(&x[..16]);
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            t[i] += t[i + w];
        }
        w /= 2;
    }
    t[0]
}
