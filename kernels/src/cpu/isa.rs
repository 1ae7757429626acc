//! Which instruction set the CPU kernels run with, decided once per process.
//!
//! Every fast path has a portable twin that performs the same IEEE
//! operations in the same order (same fused multiply-adds, same reduction
//! trees), so the choice changes speed, never results: a test runs every
//! variant the machine supports and asserts they agree bit for bit.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F kernels (`std::arch` intrinsics).
    Avx512,
    /// The portable code compiled for AVX2 + FMA, where `mul_add` is one
    /// instruction rather than a libm call (x86-64 without AVX-512).
    Fma,
    /// Plain Rust with `f32::mul_add`; runs anywhere.
    Portable,
}

/// The best instruction set this CPU supports, unless `CAKE_KERNELS_ISA`
/// names another one it supports (`avx512`, `fma` or `portable`): results
/// are the same bits either way, so this only changes speed.
pub(crate) fn detect() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let all = supported();
        let wanted = match std::env::var("CAKE_KERNELS_ISA").as_deref() {
            Ok("avx512") => Some(Isa::Avx512),
            Ok("fma") => Some(Isa::Fma),
            Ok("portable") => Some(Isa::Portable),
            _ => None,
        };
        wanted.filter(|w| all.contains(w)).unwrap_or(all[0])
    })
}

/// Every variant this CPU can run, best first (never empty).
pub(crate) fn supported() -> Vec<Isa> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") {
            v.push(Isa::Avx512);
        }
        if has!("avx2") && has!("fma") {
            v.push(Isa::Fma);
        }
    }
    v.push(Isa::Portable);
    v
}
