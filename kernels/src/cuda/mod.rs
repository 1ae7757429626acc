//! The CUDA backend (feature `cuda`): cudarc with the driver, NVRTC and
//! cuBLAS loaded at run time, so a build needs no CUDA toolkit and a
//! machine without a GPU still runs the CPU backend.
//!
//! One [`Backend`] per GPU, made on first use and kept for the process:
//! the kernels of `kernels.cu` compiled by NVRTC for the GPU's
//! architecture (PTX cached on disk, keyed by a hash of the source, the
//! architecture and the NVRTC version), a cuBLAS handle, and two streams:
//! `compute` runs every op in order; `copy` carries host-to-device uploads
//! of KV chunks from pinned staging buffers. cudarc records an event on a
//! buffer's last write, so an op on `compute` that reads a chunk uploaded
//! on `copy` waits for exactly that chunk's copy and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{CudaBlas, result as blas_result, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::{KernelError, Result};

const SOURCE: &str = include_str!("kernels.cu");

/// Largest head size the attention kernel takes.
pub(crate) const MAX_HEAD_DIM: usize = 128;
/// Query rows per attention block (`BR` in kernels.cu).
const ATTN_ROWS: u32 = 16;
/// Bytes of one pinned staging buffer for uploads.
const STAGING_BYTES: usize = 8 << 20;

fn err(what: &str, e: impl std::fmt::Display) -> KernelError {
    KernelError::Cuda(format!("{what}: {e}"))
}

/// Device memory of one tensor: f32, or bf16 bits (weights only).
#[derive(Debug, Clone)]
pub(crate) enum Buf {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<u16>),
}

impl Buf {
    pub(crate) fn f32(&self, op: &'static str) -> Result<&CudaSlice<f32>> {
        match self {
            Buf::F32(s) => Ok(s),
            Buf::Bf16(_) => Err(KernelError::Dtype { op }),
        }
    }

    pub(crate) fn f32_mut(&mut self, op: &'static str) -> Result<&mut CudaSlice<f32>> {
        match self {
            Buf::F32(s) => Ok(s),
            Buf::Bf16(_) => Err(KernelError::Dtype { op }),
        }
    }
}

struct Funcs {
    cast_f32_bf16: CudaFunction,
    bf16_to_f32: CudaFunction,
    f16_to_f32: CudaFunction,
    rms_norm: CudaFunction,
    rope: CudaFunction,
    silu_mul: CudaFunction,
    add_inplace: CudaFunction,
    embedding: CudaFunction,
    attention: CudaFunction,
}

/// One GPU: context, streams, kernels, cuBLAS.
pub(crate) struct Backend {
    ordinal: usize,
    name: String,
    cc: (i32, i32),
    pub(crate) compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    /// One handle per GPU; cuBLAS handles must not be used from two
    /// threads at once (several workers share a GPU).
    blas: Mutex<CudaBlas>,
    f: Funcs,
    /// Pinned host buffers for uploads, reused (allocating pinned memory
    /// costs milliseconds).
    staging: Mutex<Vec<(PinnedHostSlice<u8>, Option<CudaEvent>)>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

type Registry = Mutex<HashMap<usize, std::result::Result<Arc<Backend>, String>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The backend of GPU `ordinal`, made on first call. A failure (no
/// driver, no such GPU, NVRTC or cuBLAS missing) is remembered and
/// returned again with the same reason.
pub(crate) fn backend(ordinal: usize) -> Result<Arc<Backend>> {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    let entry = r.entry(ordinal).or_insert_with(|| {
        Backend::new(ordinal)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    });
    entry
        .clone()
        .map_err(|reason| KernelError::Cuda(format!("cuda:{ordinal} unavailable: {reason}")))
}

impl Backend {
    fn new(ordinal: usize) -> Result<Backend> {
        // SAFETY: only tries to dlopen the libraries by their usual names.
        let (cuda, nvrtc, cublas) = unsafe {
            (
                cudarc::driver::sys::is_culib_present(),
                cudarc::nvrtc::sys::is_culib_present(),
                cudarc::cublas::sys::is_culib_present(),
            )
        };
        if !cuda {
            return Err(KernelError::Cuda(
                "no NVIDIA driver (libcuda.so) found".into(),
            ));
        }
        if !nvrtc {
            return Err(KernelError::Cuda(
                "NVRTC (libnvrtc.so.13) not found; add the CUDA 13 libraries to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        if !cublas {
            return Err(KernelError::Cuda(
                "cuBLAS (libcublas.so.13) not found; add the CUDA 13 libraries to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| err("counting GPUs", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(KernelError::Cuda(format!(
                "no GPU {ordinal}: the driver sees {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| err("creating the context", e))?;
        let name = ctx.name().map_err(|e| err("reading the GPU name", e))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| err("reading the compute capability", e))?;
        let compute = ctx
            .new_stream()
            .map_err(|e| err("creating the compute stream", e))?;
        let copy = ctx
            .new_stream()
            .map_err(|e| err("creating the copy stream", e))?;
        let ptx = compile(cc)?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| err("loading the kernels", e))?;
        let func = |n: &str| module.load_function(n).map_err(|e| err(n, e));
        let f = Funcs {
            cast_f32_bf16: func("cast_f32_bf16")?,
            bf16_to_f32: func("bf16_to_f32")?,
            f16_to_f32: func("f16_to_f32")?,
            rms_norm: func("rms_norm")?,
            rope: func("rope")?,
            silu_mul: func("silu_mul")?,
            add_inplace: func("add_inplace")?,
            embedding: func("embedding")?,
            attention: func("attention")?,
        };
        let blas = CudaBlas::new(compute.clone()).map_err(|e| err("creating cuBLAS", e))?;
        Ok(Backend {
            ordinal,
            name,
            cc,
            compute,
            copy,
            blas: Mutex::new(blas),
            f,
            staging: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "cuda:{} ({}, sm_{}{})",
            self.ordinal, self.name, self.cc.0, self.cc.1
        )
    }

    /// Waits until every op issued so far has finished.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.compute
            .synchronize()
            .map_err(|e| err("synchronize", e))?;
        self.copy.synchronize().map_err(|e| err("synchronize", e))
    }

    /// An event recorded on the compute stream now (timing enabled).
    pub(crate) fn mark(&self) -> Result<CudaEvent> {
        self.compute
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| err("recording an event", e))
    }

    // ---- memory ----

    pub(crate) fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.compute
            .clone_htod(data)
            .map_err(|e| err("copying to the GPU", e))
    }

    pub(crate) fn upload_bf16(&self, bits: &[u16]) -> Result<CudaSlice<u16>> {
        self.compute
            .clone_htod(bits)
            .map_err(|e| err("copying to the GPU", e))
    }

    pub(crate) fn zeros(&self, n: usize) -> Result<CudaSlice<f32>> {
        self.compute
            .alloc_zeros::<f32>(n)
            .map_err(|e| err("allocating GPU memory", e))
    }

    fn alloc_f32(&self, n: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: every caller launches a kernel that writes all `n` values
        // before anything reads them.
        unsafe { self.compute.alloc::<f32>(n.max(1)) }.map_err(|e| err("allocating GPU memory", e))
    }

    pub(crate) fn download(&self, buf: &Buf) -> Result<Vec<f32>> {
        match buf {
            Buf::F32(s) => self
                .compute
                .clone_dtoh(s)
                .map_err(|e| err("copying from the GPU", e)),
            Buf::Bf16(s) => {
                let bits = self
                    .compute
                    .clone_dtoh(s)
                    .map_err(|e| err("copying from the GPU", e))?;
                Ok(bits
                    .into_iter()
                    .map(|b| f32::from_bits((b as u32) << 16))
                    .collect())
            }
        }
    }

    pub(crate) fn copy_range(&self, buf: &Buf, start: usize, end: usize) -> Result<Buf> {
        Ok(match buf {
            Buf::F32(s) => Buf::F32(
                self.compute
                    .clone_dtod(&s.slice(start..end))
                    .map_err(|e| err("copying on the GPU", e))?,
            ),
            Buf::Bf16(s) => Buf::Bf16(
                self.compute
                    .clone_dtod(&s.slice(start..end))
                    .map_err(|e| err("copying on the GPU", e))?,
            ),
        })
    }

    /// Uploads `data` on the copy stream through pinned staging buffers,
    /// two in flight: the host copy into one overlaps the DMA of the other.
    /// The returned buffer's write event marks the copy: ops on the compute
    /// stream wait for it, nothing else does.
    fn upload_staged<T: DeviceRepr + Copy>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        // SAFETY: every element is written by the copies below before any
        // op reads it (ops wait for the buffer's write event).
        let mut dst = unsafe { self.copy.alloc::<T>(data.len().max(1)) }
            .map_err(|e| err("allocating GPU memory", e))?;
        let per = (STAGING_BYTES / std::mem::size_of::<T>().max(1)).max(1);
        let mut bufs = {
            let mut pool = self.staging.lock().unwrap_or_else(|e| e.into_inner());
            let mut v = Vec::with_capacity(2);
            while v.len() < 2 {
                match pool.pop() {
                    Some(b) => v.push(b),
                    None => v.push((
                        // SAFETY: the buffer is written before it is read.
                        unsafe { self.compute.context().alloc_pinned::<u8>(STAGING_BYTES) }
                            .map_err(|e| err("allocating pinned memory", e))?,
                        None,
                    )),
                }
            }
            v
        };
        for (i, piece) in data.chunks(per).enumerate() {
            let (buf, ev) = &mut bufs[i % 2];
            // This buffer's previous copy must have left it.
            if let Some(e) = ev.take() {
                e.synchronize()
                    .map_err(|e| err("waiting for a staging buffer", e))?;
            }
            let host = buf
                .as_mut_slice()
                .map_err(|e| err("waiting for a staging buffer", e))?;
            let bytes = as_bytes(piece);
            host[..bytes.len()].copy_from_slice(bytes);
            // SAFETY: pinned buffers are page-aligned and hold `bytes`,
            // which are `piece.len()` values of T.
            let typed: &[T] =
                unsafe { std::slice::from_raw_parts(host.as_ptr() as *const T, piece.len()) };
            let off = i * per;
            let mut view = dst.slice_mut(off..off + piece.len());
            self.copy
                .memcpy_htod(typed, &mut view)
                .map_err(|e| err("copying to the GPU", e))?;
            *ev = Some(
                self.copy
                    .record_event(None)
                    .map_err(|e| err("recording a copy event", e))?,
            );
        }
        self.staging
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(bufs);
        Ok(dst)
    }

    /// Uploads f32 values on the copy stream (KV chunks from storage).
    pub(crate) fn upload_async(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.upload_staged(data)
    }

    /// Uploads 16-bit values (bf16 or f16 bits) on the copy stream and
    /// widens them to f32 on the GPU: the chunk codecs' decode.
    pub(crate) fn upload_half_async(&self, bits: &[u16], bf16: bool) -> Result<CudaSlice<f32>> {
        let half = self.upload_staged(bits)?;
        let n = bits.len();
        // SAFETY: the kernel below writes all n values.
        let mut out = unsafe { self.copy.alloc::<f32>(n.max(1)) }
            .map_err(|e| err("allocating GPU memory", e))?;
        let f = if bf16 {
            &self.f.bf16_to_f32
        } else {
            &self.f.f16_to_f32
        };
        if n > 0 {
            let n64 = n as u64;
            let mut b = self.copy.launch_builder(f);
            b.arg(&half).arg(&mut out).arg(&n64);
            // SAFETY: `half` holds n values, `out` room for n.
            unsafe { b.launch(elementwise(n)) }.map_err(|e| err("widening a chunk", e))?;
        }
        Ok(out)
    }

    // ---- ops ----

    /// `x[m, k] · w[n, k]ᵀ` (see [`Backend::matmul_t_many`]).
    pub(crate) fn matmul_t(
        &self,
        x: &CudaSlice<f32>,
        w: &Buf,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<CudaSlice<f32>> {
        self.matmul_t_many(x, &[(w, n)], m, k)?
            .pop()
            .ok_or_else(|| KernelError::Cuda("matmul returned nothing".into()))
    }

    /// `x` rounded to bf16 (`n` values).
    fn cast_bf16(&self, x: &CudaSlice<f32>, n: usize) -> Result<CudaSlice<u16>> {
        // SAFETY: the cast writes all n values.
        let mut xb =
            unsafe { self.compute.alloc::<u16>(n) }.map_err(|e| err("allocating GPU memory", e))?;
        let n64 = n as u64;
        let mut b = self.compute.launch_builder(&self.f.cast_f32_bf16);
        b.arg(x).arg(&mut xb).arg(&n64);
        // SAFETY: x and xb hold n values.
        unsafe { b.launch(elementwise(n)) }.map_err(|e| err("cast to bf16", e))?;
        Ok(xb)
    }

    /// `x[m, k] · wᵢ[nᵢ, k]ᵀ` for weights sharing the input (Q, K, V; gate,
    /// up). bf16 weights: `x` is rounded to bf16 once for all of them and
    /// cuBLAS multiplies with f32 accumulation and f32 output; f32 weights
    /// use a plain f32 GEMM.
    pub(crate) fn matmul_t_many(
        &self,
        x: &CudaSlice<f32>,
        ws: &[(&Buf, usize)],
        m: usize,
        k: usize,
    ) -> Result<Vec<CudaSlice<f32>>> {
        let mut xb: Option<CudaSlice<u16>> = None;
        let mut outs = Vec::with_capacity(ws.len());
        for &(w, n) in ws {
            if m == 0 || n == 0 || k == 0 {
                outs.push(self.zeros(m * n)?);
                continue;
            }
            let mut out = self.alloc_f32(m * n)?;
            match w {
                Buf::Bf16(wb) => {
                    if xb.is_none() {
                        xb = Some(self.cast_bf16(x, m * k)?);
                    }
                    if let Some(xb) = &xb {
                        let ty = blas_sys::cudaDataType::CUDA_R_16BF;
                        self.gemm_ex(xb, wb, &mut out, (m, k, n), ty)?;
                    }
                }
                Buf::F32(wf) => {
                    let ty = blas_sys::cudaDataType::CUDA_R_32F;
                    self.gemm_ex(x, wf, &mut out, (m, k, n), ty)?;
                }
            }
            outs.push(out);
        }
        Ok(outs)
    }

    /// Row-major `out[m, n] = x[m, k] · w[n, k]ᵀ` is column-major
    /// `outᵀ = w · xᵀ`: cuBLAS with A = w (transposed), B = x.
    fn gemm_ex<T>(
        &self,
        x: &CudaSlice<T>,
        w: &CudaSlice<T>,
        out: &mut CudaSlice<f32>,
        (m, k, n): (usize, usize, usize),
        ty: blas_sys::cudaDataType,
    ) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (xp, _gx) = x.device_ptr(&self.compute);
        let (wp, _gw) = w.device_ptr(&self.compute);
        let (op, _go) = cudarc::driver::DevicePtrMut::device_ptr_mut(out, &self.compute);
        let blas = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the pointers cover m·k, n·k and m·n values of the types
        // named, on the stream the handle is bound to.
        unsafe {
            blas_result::gemm_ex(
                *blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                (&alpha) as *const f32 as *const _,
                wp as *const _,
                ty,
                k as i32,
                xp as *const _,
                ty,
                k as i32,
                (&beta) as *const f32 as *const _,
                op as *mut _,
                blas_sys::cudaDataType::CUDA_R_32F,
                n as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| err("cuBLAS GEMM", e))
    }

    /// A bf16 × bf16 → f32 GEMM on device-resident operands, for measuring
    /// the GPU's GEMM rate (no casts, no allocations inside the timing).
    pub(crate) fn bench_gemm_bf16(
        &self,
        m: usize,
        k: usize,
        n: usize,
        iters: usize,
    ) -> Result<f64> {
        let x = self.upload_bf16(&vec![0x3f80u16; m * k])?;
        let w = self.upload_bf16(&vec![0x3c00u16; n * k])?;
        let mut out = self.zeros(m * n)?;
        let ty = blas_sys::cudaDataType::CUDA_R_16BF;
        self.gemm_ex(&x, &w, &mut out, (m, k, n), ty)?;
        self.synchronize()?;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            self.gemm_ex(&x, &w, &mut out, (m, k, n), ty)?;
        }
        self.synchronize()?;
        let secs = t.elapsed().as_secs_f64().max(1e-9);
        Ok(2.0 * (m * n * k) as f64 * iters as f64 / secs / 1e9)
    }

    pub(crate) fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        eps: f32,
        rows: usize,
        d: usize,
    ) -> Result<CudaSlice<f32>> {
        let mut out = self.alloc_f32(rows * d)?;
        if rows == 0 || d == 0 {
            return Ok(out);
        }
        let d32 = d as i32;
        let mut b = self.compute.launch_builder(&self.f.rms_norm);
        b.arg(x).arg(w).arg(&mut out).arg(&d32).arg(&eps);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: x and out hold rows·d values, w holds d.
        unsafe { b.launch(cfg) }.map_err(|e| err("rms_norm", e))?;
        Ok(out)
    }

    pub(crate) fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        rows: usize,
        heads: usize,
        hd: usize,
        pos0: usize,
        inv_freq: &CudaSlice<f32>,
    ) -> Result<()> {
        let n = rows * heads * hd / 2;
        if n == 0 {
            return Ok(());
        }
        let (r, h, d, p) = (rows as i32, heads as i32, hd as i32, pos0 as u64);
        let mut b = self.compute.launch_builder(&self.f.rope);
        b.arg(x).arg(&r).arg(&h).arg(&d).arg(&p).arg(inv_freq);
        // SAFETY: x holds rows·heads·hd values, inv_freq hd/2.
        unsafe { b.launch(elementwise(n)) }.map_err(|e| err("rope", e))?;
        Ok(())
    }

    pub(crate) fn silu_mul(
        &self,
        g: &CudaSlice<f32>,
        u: &CudaSlice<f32>,
        n: usize,
    ) -> Result<CudaSlice<f32>> {
        let mut out = self.alloc_f32(n)?;
        if n == 0 {
            return Ok(out);
        }
        let n64 = n as u64;
        let mut b = self.compute.launch_builder(&self.f.silu_mul);
        b.arg(g).arg(u).arg(&mut out).arg(&n64);
        // SAFETY: all three hold n values.
        unsafe { b.launch(elementwise(n)) }.map_err(|e| err("silu_mul", e))?;
        Ok(out)
    }

    pub(crate) fn add_inplace(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        let mut b = self.compute.launch_builder(&self.f.add_inplace);
        b.arg(x).arg(y).arg(&n64);
        // SAFETY: both hold n values.
        unsafe { b.launch(elementwise(n)) }.map_err(|e| err("add", e))?;
        Ok(())
    }

    pub(crate) fn embedding(
        &self,
        table: &CudaSlice<f32>,
        ids: &[u32],
        d: usize,
    ) -> Result<CudaSlice<f32>> {
        let mut out = self.alloc_f32(ids.len() * d)?;
        if ids.is_empty() || d == 0 {
            return Ok(out);
        }
        let dev_ids = self
            .compute
            .clone_htod(ids)
            .map_err(|e| err("copying token ids", e))?;
        let d32 = d as i32;
        let mut b = self.compute.launch_builder(&self.f.embedding);
        b.arg(table).arg(&dev_ids).arg(&mut out).arg(&d32);
        let cfg = LaunchConfig {
            grid_dim: (ids.len() as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: ids were checked against the table's rows by the caller.
        unsafe { b.launch(cfg) }.map_err(|e| err("embedding", e))?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention(
        &self,
        q: &CudaSlice<f32>,
        keys: &[&CudaSlice<f32>],
        values: &[&CudaSlice<f32>],
        lens: &[usize],
        (m, n_heads, kv_heads, hd): (usize, usize, usize, usize),
        q_pos0: usize,
        scale: f32,
    ) -> Result<CudaSlice<f32>> {
        if hd > MAX_HEAD_DIM {
            return Err(KernelError::Cuda(format!(
                "attention supports head_dim up to {MAX_HEAD_DIM}, got {hd}"
            )));
        }
        let mut out = self.alloc_f32(m * n_heads * hd)?;
        if m == 0 {
            return Ok(out);
        }
        // Raw pointers of every chunk; reading them through `device_ptr`
        // makes the compute stream wait for each chunk's upload event.
        let mut guards = Vec::with_capacity(keys.len() * 2);
        let mut kp = Vec::with_capacity(keys.len());
        let mut vp = Vec::with_capacity(keys.len());
        for (k, v) in keys.iter().zip(values) {
            let (p, g) = k.device_ptr(&self.compute);
            kp.push(p);
            guards.push(g);
            let (p, g) = v.device_ptr(&self.compute);
            vp.push(p);
            guards.push(g);
        }
        let mut starts = Vec::with_capacity(lens.len());
        let mut acc = 0u64;
        for &l in lens {
            starts.push(acc);
            acc += l as u64;
        }
        let htod = |v: &[u64]| {
            self.compute
                .clone_htod(v)
                .map_err(|e| err("copying chunk pointers", e))
        };
        let (dk, dv, ds) = (htod(&kp)?, htod(&vp)?, htod(&starts)?);
        let (nc, m32, nh, nkv, hd32, p0) = (
            keys.len() as i32,
            m as i32,
            n_heads as i32,
            kv_heads as i32,
            hd as i32,
            q_pos0 as u64,
        );
        let mut b = self.compute.launch_builder(&self.f.attention);
        b.arg(q)
            .arg(&mut out)
            .arg(&dk)
            .arg(&dv)
            .arg(&ds)
            .arg(&nc)
            .arg(&m32)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd32)
            .arg(&p0)
            .arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: ((m as u32).div_ceil(ATTN_ROWS), n_heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the op checked every chunk's shape and that the chunks
        // cover the queries' positions; the kernel reads within them.
        unsafe { b.launch(cfg) }.map_err(|e| err("attention", e))?;
        drop(guards);
        Ok(out)
    }
}

fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535 * 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: f32 and u16 are plain data without padding; the byte view
    // covers exactly the slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Compiles the kernels for compute capability `cc`, or reads the PTX a
/// previous run cached.
fn compile(cc: (i32, i32)) -> Result<Ptx> {
    let arch = format!("compute_{}{}", cc.0, cc.1);
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC was found (checked by the caller); writes two ints.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    let version = format!("{major}.{minor}");
    let key = fnv1a(&[SOURCE.as_bytes(), arch.as_bytes(), version.as_bytes()]);
    let path = cache_dir().map(|d| d.join(format!("kernels-{key:016x}.ptx")));
    if let Some(p) = &path
        && let Ok(src) = std::fs::read_to_string(p)
    {
        return Ok(Ptx::from_src(src));
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}")],
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(SOURCE, opts).map_err(|e| err("compiling kernels.cu", e))?;
    if let Some(p) = &path {
        // A cache that cannot be written only costs a compile next time.
        let _ = p
            .parent()
            .map(std::fs::create_dir_all)
            .map(|_| std::fs::write(p, ptx.to_src()));
    }
    Ok(ptx)
}

/// Compiles `kernels.cu` with NVRTC for `arch` (e.g. `compute_90`) without
/// a GPU: lets CI-less machines with NVRTC check the source.
pub fn compile_source(arch: &str) -> Result<String> {
    // SAFETY: only tries to dlopen NVRTC by its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(KernelError::Cuda("NVRTC (libnvrtc.so.13) not found".into()));
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}")],
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, opts)
        .map(|p| p.to_src())
        .map_err(|e| err("compiling kernels.cu", e))
}

/// `$CAKE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/cake`, else
/// `$HOME/.cache/cake`.
fn cache_dir() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("CAKE_KERNEL_CACHE") {
        return Some(d.into());
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(std::path::PathBuf::from(d).join("cake"));
    }
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/cake"))
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
