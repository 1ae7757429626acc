//! NVRTC compilation of `kernels.cu`, with the PTX cached on disk.

use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use super::err;
use crate::{KernelError, Result};

const SOURCE: &str = include_str!("kernels.cu");

/// Compiles the kernels for compute capability `cc`, or reads the PTX a
/// previous run cached.
pub(super) fn compile(cc: (i32, i32)) -> Result<Ptx> {
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
