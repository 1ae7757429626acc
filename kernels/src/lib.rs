//! `cake-kernels`: the tensor math a Llama forward pass needs.
//!
//! Model code sees only [`Tensor`], [`Device`] and the functions in [`ops`];
//! each op dispatches on the tensor's device, so a GPU backend slots in
//! beside the CPU one without touching the model. The CPU backend always
//! works and is the reference every other backend is tested against.
//!
//! Results are deterministic: the same inputs give the same bits whatever
//! the thread count, and `matmul_t` and `attention` compute each output row
//! the same way whether it comes alone or in a batch (the engine relies on
//! prefill in two calls matching one call bitwise). The CPU backend runs
//! AVX-512 kernels where the CPU has them; each has a portable twin that
//! performs the same operations in the same order (also built for AVX2 +
//! FMA, for x86 CPUs without AVX-512), so all give the same
//! bits (`CAKE_KERNELS_ISA=avx512|fma|portable` picks one the CPU supports).
//! Matmul weights may be held in their 16-bit type ([`Tensor::weight_half`]):
//! a decode step then reads half the bytes, and since widening is exact the
//! results are the bits f32 weights with the same values give.
//!
//! This crate depends on no other workspace crate.
#![allow(unsafe_code)]

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod error;
mod key_blocks;
mod mapped;
pub mod ops;
mod rate;
mod rope;
mod tensor;

pub use error::KernelError;
pub use key_blocks::KeyBlocks;
pub use mapped::MappedFile;
pub use rate::gemm_gflops;
pub use rope::{RopeScaling, RopeTable};
pub use tensor::{DType, Device, Mark, Tensor};

/// The devices a test should run its body on: the CPU, and `cuda:0` when
/// this build has the `cuda` feature and a GPU answers (the reason it does
/// not is printed). With `CAKE_REQUIRE_GPU=1` a missing GPU panics, so a
/// GPU check cannot pass by skipping.
pub fn test_devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match Device::probe("cuda:0") {
        Ok(d) => {
            eprintln!("testing on {}", d.describe());
            out.push(d);
        }
        Err(e) => {
            if std::env::var("CAKE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("CAKE_REQUIRE_GPU=1 but no GPU: {e}");
            }
            eprintln!("GPU tests skipped: {e}");
        }
    }
    out
}

/// Compiles the CUDA kernels' source with NVRTC for `arch` (e.g.
/// `compute_90`) and returns the PTX. Needs NVRTC, not a GPU: lets a
/// machine without one check that the kernels compile.
#[cfg(feature = "cuda")]
pub fn compile_cuda_kernels(arch: &str) -> Result<String> {
    cuda::compile_source(arch)
}

/// The bf16 × bf16 → f32 GEMM rate of `device` in GFLOP/s on
/// `x[m, k] · w[n, k]ᵀ` with operands already on the device (cuBLAS, f32
/// accumulation), over `iters` timed calls after one warm-up; for the CPU,
/// [`gemm_gflops`] (f32, our own kernel).
pub fn device_gemm_gflops(
    device: Device,
    m: usize,
    k: usize,
    n: usize,
    iters: usize,
) -> Result<f64> {
    match device {
        Device::Cpu => Ok(gemm_gflops(m, k, n, iters)),
        #[cfg(feature = "cuda")]
        Device::Cuda(o) => cuda::backend(o)?.bench_gemm_bf16(m, k, n, iters),
    }
}

/// Runs `f` on one of the CPU backend's worker threads (rayon's pool),
/// so the ops inside it start their parallel parts from there: a decode
/// step makes hundreds of small calls, and from a thread outside the pool
/// each one would be handed over and waited for (a wake-up per op). Just
/// calls `f` when already on a worker. Results do not depend on where `f`
/// runs.
pub fn on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.unwrap_or_else(|| unreachable!("rayon::scope runs its body before returning"))
}

/// Result of a kernel call.
pub type Result<T> = std::result::Result<T, KernelError>;
