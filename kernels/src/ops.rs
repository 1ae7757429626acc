//! The ops model code calls. Each checks shapes and devices, then runs
//! the backend of the tensors' device.

use crate::error::shape_err;
use crate::{KernelError, KeyBlocks, Result, RopeTable, Tensor, cpu, tensor::Device};

#[cfg(feature = "cuda")]
use crate::cuda::{self, Buf};

/// The one device all of `ts` live on. On the CPU every one must be f32
/// (16-bit weights go only to [`matmul_t`] and [`embedding`], which check
/// them apart).
fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts.first().map(|t| t.device()).unwrap_or_default();
    if ts.iter().any(|t| t.device() != d) {
        return Err(KernelError::Device { op });
    }
    if ts.iter().any(|t| t.cpu_half().is_some()) {
        return Err(KernelError::Dtype { op });
    }
    Ok(d)
}

/// `x[m, k] · w[n, k]ᵀ → [m, n]`: a linear layer with weights in the
/// Hugging Face `[out_features, in_features]` layout. `w` may be f32 or,
/// on the CPU, a 16-bit weight ([`Tensor::weight_half`]), read as it is
/// stored and widened exactly.
///
/// Deterministic: each output element is one chain of fused multiply-adds
/// in `k` order starting from `+0.0`, so row `i` of the result has the same
/// bits whatever `m` is (1 row or a whole chunk), however many threads run,
/// whichever instruction set is used, and whether `w` is held in f32 or in
/// 16 bits (same values, same bits).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (xs, ws) = (x.shape(), w.shape());
    if xs.len() != 2 || ws.len() != 2 || xs[1] != ws[1] {
        return Err(shape_err("matmul_t", format!("x {xs:?} · w {ws:?}ᵀ")));
    }
    let (m, k, n) = (xs[0], xs[1], ws[0]);
    if x.device() != w.device() {
        return Err(KernelError::Device { op: "matmul_t" });
    }
    match same_device("matmul_t", &[x])? {
        Device::Cpu => {
            let mut out = vec![0.0; m * n];
            match w.cpu_half() {
                Some(h) => cpu::matmul_t_half(x.cpu(), h, &mut out, m),
                None => cpu::matmul_t(x.cpu(), w.cpu(), &mut out, m, k, n),
            }
            Tensor::from_vec(out, &[m, n], Device::Cpu)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(o) => {
            let out = cuda::backend(o)?.matmul_t(
                x.cuda_buf()?.f32("matmul_t")?,
                w.cuda_buf()?,
                m,
                k,
                n,
            )?;
            Ok(Tensor::from_cuda(o, Buf::F32(out), &[m, n]))
        }
    }
}

/// [`matmul_t`] of one input by several weights (e.g. the Q, K and V
/// projections). Same results as separate calls; on the CPU, 16-bit
/// weights share one parallel region (one hand-over to the threads in a
/// decode step instead of one per weight); on a GPU the input is rounded
/// to bf16 once for all of them.
pub fn matmul_t_many(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    let xs = x.shape();
    for w in ws {
        let s = w.shape();
        if xs.len() != 2 || s.len() != 2 || xs[1] != s[1] {
            return Err(shape_err("matmul_t", format!("x {xs:?} · w {s:?}ᵀ")));
        }
    }
    if ws.iter().any(|w| w.device() != x.device()) {
        return Err(KernelError::Device { op: "matmul_t" });
    }
    match same_device("matmul_t", &[x])? {
        Device::Cpu => {
            let halves: Option<Vec<_>> = ws.iter().map(|w| w.cpu_half()).collect();
            let Some(halves) = halves else {
                return ws.iter().map(|w| matmul_t(x, w)).collect();
            };
            // 16-bit weights: one parallel region for all of them.
            let m = xs[0];
            let mut bufs: Vec<Vec<f32>> = halves.iter().map(|h| vec![0.0; m * h.n]).collect();
            let mut outs: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            cpu::matmul_t_half_many(x.cpu(), &halves, &mut outs, m);
            bufs.into_iter()
                .zip(&halves)
                .map(|(b, h)| Tensor::from_vec(b, &[m, h.n], Device::Cpu))
                .collect()
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(o) => {
            let (m, k) = (xs[0], xs[1]);
            let bufs = ws
                .iter()
                .map(|w| w.cuda_buf().map(|b| (b, w.shape()[0])))
                .collect::<Result<Vec<_>>>()?;
            let outs =
                cuda::backend(o)?.matmul_t_many(x.cuda_buf()?.f32("matmul_t")?, &bufs, m, k)?;
            Ok(outs
                .into_iter()
                .zip(ws)
                .map(|(out, w)| Tensor::from_cuda(o, Buf::F32(out), &[m, w.shape()[0]]))
                .collect())
        }
    }
}

/// Root-mean-square normalisation of each row of `x[m, d]`, times `w[d]`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let (xs, ws) = (x.shape(), w.shape());
    let d = *xs.last().unwrap_or(&0);
    if ws != [d] {
        return Err(shape_err("rms_norm", format!("x {xs:?}, weight {ws:?}")));
    }
    match same_device("rms_norm", &[x, w])? {
        Device::Cpu => {
            let mut out = vec![0.0; x.len()];
            cpu::rms_norm(x.cpu(), w.cpu(), eps, d, &mut out);
            Tensor::from_vec(out, xs, Device::Cpu)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(o) => {
            let rows = x.len().checked_div(d).unwrap_or(0);
            let out = cuda::backend(o)?.rms_norm(
                x.cuda_buf()?.f32("rms_norm")?,
                w.cuda_buf()?.f32("rms_norm")?,
                eps,
                rows,
                d,
            )?;
            Ok(Tensor::from_cuda(o, Buf::F32(out), xs))
        }
    }
}

/// Rotary embeddings applied in place to `x[m, heads, head_dim]`, row `r`
/// being at position `pos0 + r`.
pub fn rope_inplace(x: &mut Tensor, pos0: usize, table: &RopeTable) -> Result<()> {
    let xs = x.shape().to_vec();
    if xs.len() != 3
        || xs[2] != table.head_dim()
        || !xs[2].is_multiple_of(2)
        || table.inv_freq().len() != xs[2] / 2
    {
        return Err(shape_err(
            "rope",
            format!("x {xs:?} with head_dim {}", table.head_dim()),
        ));
    }
    match same_device("rope", &[x])? {
        Device::Cpu => {
            cpu::rope(x.cpu_mut(), xs[1], xs[2], pos0, table.inv_freq());
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(o) => {
            let be = cuda::backend(o)?;
            let inv = be.rope_freqs(table.inv_freq())?;
            be.rope(
                x.cuda_buf_mut()?.f32_mut("rope")?,
                xs[0],
                xs[1],
                xs[2],
                pos0,
                &inv,
            )
        }
    }
}

/// `silu(gate) * up`, elementwise (the SwiGLU activation).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        return Err(shape_err(
            "silu_mul",
            format!("gate {:?}, up {:?}", gate.shape(), up.shape()),
        ));
    }
    match same_device("silu_mul", &[gate, up])? {
        Device::Cpu => {
            let mut out = vec![0.0; gate.len()];
            cpu::silu_mul(gate.cpu(), up.cpu(), &mut out);
            Tensor::from_vec(out, gate.shape(), Device::Cpu)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(o) => {
            let out = cuda::backend(o)?.silu_mul(
                gate.cuda_buf()?.f32("silu_mul")?,
                up.cuda_buf()?.f32("silu_mul")?,
                gate.len(),
            )?;
            Ok(Tensor::from_cuda(o, Buf::F32(out), gate.shape()))
        }
    }
}

/// `x += y`, elementwise (residual connections).
pub fn add_inplace(x: &mut Tensor, y: &Tensor) -> Result<()> {
    if x.shape() != y.shape() {
        return Err(shape_err(
            "add",
            format!("{:?} + {:?}", x.shape(), y.shape()),
        ));
    }
    match same_device("add", &[x, y])? {
        Device::Cpu => {
            cpu::add_inplace(x.cpu_mut(), y.cpu());
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(o) => {
            let n = x.len();
            cuda::backend(o)?.add_inplace(
                x.cuda_buf_mut()?.f32_mut("add")?,
                y.cuda_buf()?.f32("add")?,
                n,
            )
        }
    }
}

/// Softmax of each row of `x[.., d]`, in place.
pub fn softmax_inplace(x: &mut Tensor) -> Result<()> {
    let d = *x.shape().last().unwrap_or(&0);
    match same_device("softmax", &[x])? {
        Device::Cpu => {
            if d > 0 {
                x.cpu_mut().chunks_mut(d).for_each(cpu::softmax_row);
            }
            Ok(())
        }
        // Not on any hot path (sampling works on host logits): done on
        // the host.
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let mut host = Tensor::from_vec(x.to_vec()?, x.shape(), Device::Cpu)?;
            softmax_inplace(&mut host)?;
            *x = Tensor::from_vec(host.into_vec()?, x.shape(), x.device())?;
            Ok(())
        }
    }
}

/// Rows of the embedding table `table[vocab, d]` for `ids` (f32, or a
/// 16-bit weight on the CPU, widened: a tied LM head).
pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let ts = table.shape();
    if ts.len() != 2 {
        return Err(shape_err("embedding", format!("table {ts:?}")));
    }
    let (vocab, d) = (ts[0], ts[1]);
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(shape_err(
            "embedding",
            format!("token id {bad} out of vocabulary of {vocab}"),
        ));
    }
    match table.device() {
        Device::Cpu => {
            let t = table.cpu();
            let mut out = Vec::with_capacity(ids.len() * d);
            for &i in ids {
                match table.cpu_half() {
                    Some(h) => h.row_f32(i as usize, &mut out),
                    None => out.extend_from_slice(&t[i as usize * d..(i as usize + 1) * d]),
                }
            }
            Tensor::from_vec(out, &[ids.len(), d], Device::Cpu)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(o) => {
            let out = cuda::backend(o)?.embedding(table.cuda_buf()?.f32("embedding")?, ids, d)?;
            Ok(Tensor::from_cuda(o, Buf::F32(out), &[ids.len(), d]))
        }
    }
}

/// Causal attention of a chunk of queries over a KV cache held as chunks.
///
/// `q[m, n_heads, head_dim]` holds queries at positions `q_pos0..q_pos0+m`.
/// `keys[i]` and `values[i]` are `[t_i, kv_heads, head_dim]`, in position
/// order from position 0, and must cover at least `q_pos0 + m` positions
/// (the queries' own KV included). Query row `r` attends to positions
/// `0..=q_pos0 + r`. `n_heads` must be a multiple of `kv_heads`
/// (grouped-query attention). Computed in tiles of queries × 64 keys with
/// an online softmax: no score matrix over the whole context is ever built.
///
/// Deterministic: a query row's result depends only on that row, its
/// position and the cached keys/values — not on how many rows share the
/// call, how the cache is cut into chunks, or the thread schedule. So a
/// prefill split into several calls gives the same bits as one call.
pub fn attention(
    q: &Tensor,
    q_pos0: usize,
    keys: &[&Tensor],
    values: &[&Tensor],
    scale: f32,
) -> Result<Tensor> {
    let one = Attn {
        q,
        q_pos0,
        keys,
        values,
        key_blocks: None,
    };
    let mut out = attention_many(&[one], scale)?;
    out.pop()
        .ok_or_else(|| shape_err("attention", "no output for the one call"))
}

/// One sequence's queries and KV cache for [`attention_many`]: the
/// arguments of [`attention`], and optionally the cache's keys already
/// packed as the CPU kernel reads them.
#[derive(Clone, Copy)]
pub struct Attn<'a> {
    pub q: &'a Tensor,
    pub q_pos0: usize,
    pub keys: &'a [&'a Tensor],
    pub values: &'a [&'a Tensor],
    /// Whole key blocks of `keys` packed beforehand
    /// ([`KeyBlocks::extend`] over these very keys, or a prefix of them):
    /// the CPU kernel reads those blocks there instead of packing them
    /// again. Same results with or without; ignored on a GPU.
    pub key_blocks: Option<&'a KeyBlocks>,
}

impl Attn<'_> {
    /// Checks the shapes; the kernels' shape of the call.
    fn shape(&self) -> Result<cpu::AttnShape> {
        let qs = self.q.shape();
        if qs.len() != 3 {
            return Err(shape_err("attention", format!("q {qs:?}")));
        }
        let (m, n_heads, hd) = (qs[0], qs[1], qs[2]);
        let (keys, values) = (self.keys, self.values);
        if keys.len() != values.len() || keys.is_empty() {
            return Err(shape_err(
                "attention",
                format!("{} key chunks, {} value chunks", keys.len(), values.len()),
            ));
        }
        let kv_heads = keys[0].shape().get(1).copied().unwrap_or(0);
        let mut total = 0;
        for (k, v) in keys.iter().zip(values) {
            let ks = k.shape();
            if ks.len() != 3 || ks[1] != kv_heads || ks[2] != hd || v.shape() != ks {
                return Err(shape_err(
                    "attention",
                    format!("kv chunk k {ks:?} v {:?} for q {qs:?}", v.shape()),
                ));
            }
            total += ks[0];
        }
        if kv_heads == 0 || n_heads % kv_heads != 0 {
            return Err(shape_err(
                "attention",
                format!("{n_heads} query heads over {kv_heads} kv heads"),
            ));
        }
        if total < self.q_pos0 + m {
            return Err(shape_err(
                "attention",
                format!(
                    "kv covers {total} positions, queries reach {}",
                    self.q_pos0 + m
                ),
            ));
        }
        if let Some(b) = self.key_blocks
            && b.positions() > 0
            && (b.dims() != (kv_heads, hd) || b.positions() > total)
        {
            return Err(shape_err(
                "attention",
                format!(
                    "key blocks of {:?} over {} positions for kv {kv_heads}×{hd} over {total}",
                    b.dims(),
                    b.positions()
                ),
            ));
        }
        Ok(cpu::AttnShape {
            m,
            n_heads,
            kv_heads,
            hd,
            q_pos0: self.q_pos0,
        })
    }
}

/// The host data of CPU tensors.
fn host<'a>(ts: &[&'a Tensor]) -> Vec<&'a [f32]> {
    ts.iter().map(|t| t.cpu()).collect()
}

/// [`attention`] of several sequences at once, each over its own cache (a
/// decode batch). On the CPU all of them run in one parallel region, so the
/// threads share the batch's work; each result is bitwise what its own
/// [`attention`] call gives. All tensors must be on one device.
pub fn attention_many(calls: &[Attn<'_>], scale: f32) -> Result<Vec<Tensor>> {
    let shapes = calls.iter().map(Attn::shape).collect::<Result<Vec<_>>>()?;
    let mut all: Vec<&Tensor> = Vec::new();
    for c in calls {
        all.push(c.q);
        all.extend(c.keys.iter().copied());
        all.extend(c.values.iter().copied());
    }
    match same_device("attention", &all)? {
        Device::Cpu => {
            let keys: Vec<Vec<&[f32]>> = calls.iter().map(|c| host(c.keys)).collect();
            let values: Vec<Vec<&[f32]>> = calls.iter().map(|c| host(c.values)).collect();
            let cpu_calls: Vec<cpu::AttnCall<'_>> = calls
                .iter()
                .zip(&shapes)
                .zip(keys.iter().zip(&values))
                .map(|((c, &s), (ks, vs))| {
                    let (kt, kt_blocks) = c.key_blocks.map_or((&[][..], 0), KeyBlocks::raw);
                    cpu::AttnCall {
                        q: c.q.cpu(),
                        s,
                        keys: ks,
                        values: vs,
                        kt,
                        kt_blocks,
                    }
                })
                .collect();
            let mut outs: Vec<Vec<f32>> = calls.iter().map(|c| vec![0.0; c.q.len()]).collect();
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            cpu::attention_many(&cpu_calls, scale, &mut views);
            outs.into_iter()
                .zip(calls)
                .map(|(o, c)| Tensor::from_vec(o, c.q.shape(), Device::Cpu))
                .collect()
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(o) => calls
            .iter()
            .zip(&shapes)
            .map(|(c, s)| attention_cuda(o, c, s, scale))
            .collect(),
    }
}

#[cfg(feature = "cuda")]
fn attention_cuda(o: usize, c: &Attn<'_>, s: &cpu::AttnShape, scale: f32) -> Result<Tensor> {
    let (m, n_heads, kv_heads, hd) = (s.m, s.n_heads, s.kv_heads, s.hd);
    let ks = c
        .keys
        .iter()
        .map(|k| k.cuda_buf().and_then(|b| b.f32("attention")))
        .collect::<Result<Vec<_>>>()?;
    let vs = c
        .values
        .iter()
        .map(|v| v.cuda_buf().and_then(|b| b.f32("attention")))
        .collect::<Result<Vec<_>>>()?;
    let lens: Vec<usize> = c.keys.iter().map(|k| k.shape()[0]).collect();
    let out = cuda::backend(o)?.attention(
        c.q.cuda_buf()?.f32("attention")?,
        &ks,
        &vs,
        &lens,
        (m, n_heads, kv_heads, hd),
        c.q_pos0,
        scale,
    )?;
    Ok(Tensor::from_cuda(o, Buf::F32(out), c.q.shape()))
}
