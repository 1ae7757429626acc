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

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice,
};

use crate::{KernelError, Result};

mod compile;
mod memory;
mod ops;

pub use compile::compile_source;

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
    /// RoPE inverse frequencies on the device, by their bits: uploaded
    /// once per table, not at every call (one per model in practice).
    rope_freqs: Mutex<HashMap<Vec<u32>, Arc<CudaSlice<f32>>>>,
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
    let mut r = registry().lock();
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
        let ptx = compile::compile(cc)?;
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
            rope_freqs: Mutex::new(HashMap::new()),
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
}

/// Launch shape of the element-wise kernels: 256 threads, grid-stride.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535 * 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}
