//! The ops of the CUDA backend: cuBLAS GEMMs and the kernels of
//! `kernels.cu`, all on the compute stream.

use cudarc::cublas::{result as blas_result, sys as blas_sys};
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};

use super::{ATTN_ROWS, Backend, Buf, MAX_HEAD_DIM, elementwise, err};
use crate::{KernelError, Result};

impl Backend {
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
        let blas = self.blas.lock();
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
