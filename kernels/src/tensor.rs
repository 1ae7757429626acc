use crate::cpu::PackedHalf;
use crate::{KernelError, Result, error::shape_err};

#[cfg(feature = "cuda")]
use crate::cuda::{self, Buf};

/// Where a tensor's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// Host memory; ops run multi-threaded on the CPU.
    #[default]
    Cpu,
    /// NVIDIA GPU with this ordinal (feature `cuda`); ops run in order on
    /// the GPU's compute stream.
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

impl Device {
    /// Parses `cpu`, `cuda` or `cuda:N` without touching any GPU. `cuda`
    /// in a build without the `cuda` feature is an error saying so.
    pub fn parse(s: &str) -> Result<Device> {
        let s = s.trim();
        match spec_ordinal(s) {
            None => Err(KernelError::Unavailable(format!(
                "`{s}` (devices are `cpu`, `cuda` or `cuda:N`)"
            ))),
            Some(None) => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            Some(Some(n)) => Ok(Device::Cuda(n)),
            #[cfg(not(feature = "cuda"))]
            Some(Some(n)) => Err(KernelError::Unavailable(format!(
                "cuda:{n} (this build has no `cuda` feature: build with `--features cuda`)"
            ))),
        }
    }

    /// Whether `s` names a device in any build (`cpu`, `cuda`, `cuda:N`),
    /// whether or not this build or machine can run it.
    pub fn is_valid_spec(s: &str) -> bool {
        spec_ordinal(s.trim()).is_some()
    }

    /// Parses `s` and, for a GPU, brings its backend up (driver, NVRTC
    /// compile of the kernels, cuBLAS), so an unusable device is reported
    /// here, with the reason, rather than at the first op.
    pub fn probe(s: &str) -> Result<Device> {
        let d = Device::parse(s)?;
        match d {
            Device::Cpu => Ok(d),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => cuda::backend(n).map(|_| d),
        }
    }

    /// The device in words, e.g. `cuda:0 (NVIDIA H100 80GB HBM3, sm_90)`.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => match cuda::backend(*n) {
                Ok(b) => b.describe(),
                Err(e) => format!("cuda:{n} ({e})"),
            },
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// Waits until every op issued on the device has finished (GPU ops
    /// are asynchronous; CPU ops are done when they return).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => cuda::backend(*n)?.synchronize(),
        }
    }
}

/// A point in a device's sequence of ops, for timing them: on the CPU an
/// instant (ops are done when they return); on a GPU an event recorded on
/// the compute stream, so the time between two marks is the GPU's own time
/// for the ops issued between them, with no synchronisation in between.
#[derive(Debug)]
pub struct Mark(MarkInner);

#[derive(Debug)]
enum MarkInner {
    Cpu(std::time::Instant),
    #[cfg(feature = "cuda")]
    Cuda(cudarc::driver::CudaEvent),
}

impl Mark {
    /// Seconds from `earlier` to this mark (waits for this mark's ops on a
    /// GPU). Marks of different devices give an error.
    pub fn seconds_since(&self, earlier: &Mark) -> Result<f64> {
        match (&self.0, &earlier.0) {
            (MarkInner::Cpu(a), MarkInner::Cpu(b)) => Ok(a.duration_since(*b).as_secs_f64()),
            #[cfg(feature = "cuda")]
            (MarkInner::Cuda(a), MarkInner::Cuda(b)) => b
                .elapsed_ms(a)
                .map(|ms| f64::from(ms) / 1e3)
                .map_err(|e| KernelError::Cuda(format!("event timing: {e}"))),
            #[cfg(feature = "cuda")]
            _ => Err(KernelError::Device { op: "mark" }),
        }
    }
}

impl Device {
    /// Marks the present point of this device's ops (see [`Mark`]).
    pub fn mark(&self) -> Result<Mark> {
        match self {
            Device::Cpu => Ok(Mark(MarkInner::Cpu(std::time::Instant::now()))),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => Ok(Mark(MarkInner::Cuda(cuda::backend(*n)?.mark()?))),
        }
    }
}

/// `cpu` → `Some(None)`, `cuda` / `cuda:N` → `Some(Some(N))`, anything
/// else → `None`.
fn spec_ordinal(s: &str) -> Option<Option<usize>> {
    if s == "cpu" {
        return Some(None);
    }
    match s.strip_prefix("cuda")? {
        "" => Some(Some(0)),
        rest => rest.strip_prefix(':')?.parse().ok().map(Some),
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How a tensor's values are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    /// bfloat16: a matmul weight (on the CPU in its 16-bit type, see
    /// [`Tensor::weight_half`]; on a GPU every matmul weight).
    Bf16,
    /// IEEE half: a matmul weight on the CPU.
    F16,
}

#[derive(Debug, Clone)]
enum Storage {
    Cpu(Vec<f32>),
    /// A matmul weight in 16 bits, grouped for the kernels (`cpu/packed.rs`).
    CpuHalf(PackedHalf),
    #[cfg(feature = "cuda")]
    Cuda {
        ordinal: usize,
        buf: Buf,
    },
}

/// A dense, row-major tensor on one device: f32, except matmul weights on
/// a GPU, which are held as bf16 (see [`Tensor::weight`]), and 16-bit
/// matmul weights on the CPU (see [`Tensor::weight_half`]).
#[derive(Debug, Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(shape_err(
            op,
            format!("shape {shape:?} holds {n} values, data has {len}"),
        ));
    }
    Ok(())
}

/// f32 → bf16 bits, round to nearest even (NaN stays NaN).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn to_bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// bf16 or f16 bits → f32 (exact).
pub(crate) fn half_to_f32(b: u16, bf16: bool) -> f32 {
    if bf16 {
        return f32::from_bits((b as u32) << 16);
    }
    let sign = ((b as u32) & 0x8000) << 16;
    let exp = ((b as u32) >> 10) & 0x1f;
    let man = (b as u32) & 0x3ff;
    if exp == 0 {
        let v = man as f32 * 5.960_464_5e-8;
        return if sign != 0 { -v } else { v };
    }
    if exp == 31 {
        return f32::from_bits(sign | 0x7f80_0000 | (man << 13));
    }
    f32::from_bits(sign | ((exp + 112) << 23) | (man << 13))
}

impl Tensor {
    /// Wraps host data; `data.len()` must equal the product of `shape`.
    /// On a GPU the data is copied on the compute stream.
    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: Device) -> Result<Tensor> {
        check_len("from_vec", shape, data.len())?;
        let storage = match device {
            Device::Cpu => Storage::Cpu(data),
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => Storage::Cuda {
                ordinal: o,
                buf: Buf::F32(cuda::backend(o)?.upload(&data)?),
            },
        };
        Ok(Tensor {
            shape: shape.to_vec(),
            storage,
        })
    }

    /// A matmul weight `[out, in]`. On the CPU it is kept as f32; on a GPU
    /// it is rounded to bf16 (cuBLAS multiplies bf16 with f32 accumulation)
    /// — exact for checkpoints stored in bf16.
    pub fn weight(data: Vec<f32>, shape: &[usize], device: Device) -> Result<Tensor> {
        check_len("weight", shape, data.len())?;
        match device {
            Device::Cpu => Tensor::from_vec(data, shape, device),
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => {
                let bits: Vec<u16> = data.iter().map(|&v| to_bf16_bits(v)).collect();
                drop(data);
                Ok(Tensor {
                    shape: shape.to_vec(),
                    storage: Storage::Cuda {
                        ordinal: o,
                        buf: Buf::Bf16(cuda::backend(o)?.upload_bf16(&bits)?),
                    },
                })
            }
        }
    }

    /// A matmul weight `[out, in]` kept in its 16-bit type (`bf16` true:
    /// bfloat16, else IEEE half), `bits` row-major. On the CPU it stays 16
    /// bits, regrouped for the kernels, so a decode step reads half the
    /// bytes of f32 weights; [`ops::matmul_t`](crate::ops::matmul_t)
    /// widens it exactly, so results are the bits f32 weights holding the
    /// same values give. [`ops::embedding`](crate::ops::embedding) reads
    /// its rows (a tied LM head). Other ops do not take it. On a GPU it is
    /// uploaded as bf16 (f16 is rounded to bf16, as [`Tensor::weight`]
    /// does).
    pub fn weight_half(
        bits: Vec<u16>,
        bf16: bool,
        shape: &[usize],
        device: Device,
    ) -> Result<Tensor> {
        check_len("weight_half", shape, bits.len())?;
        if shape.len() != 2 {
            return Err(shape_err(
                "weight_half",
                format!("shape {shape:?}: a matmul weight is [out, in]"),
            ));
        }
        let storage = match device {
            Device::Cpu => Storage::CpuHalf(PackedHalf::from_rows(&bits, bf16, shape[0], shape[1])),
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => {
                let bits = if bf16 {
                    bits
                } else {
                    bits.iter()
                        .map(|&b| to_bf16_bits(half_to_f32(b, false)))
                        .collect()
                };
                Storage::Cuda {
                    ordinal: o,
                    buf: Buf::Bf16(cuda::backend(o)?.upload_bf16(&bits)?),
                }
            }
        };
        Ok(Tensor {
            shape: shape.to_vec(),
            storage,
        })
    }

    /// How the values are held.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Cpu(_) => DType::F32,
            Storage::CpuHalf(h) if h.bf16 => DType::Bf16,
            Storage::CpuHalf(_) => DType::F16,
            #[cfg(feature = "cuda")]
            Storage::Cuda {
                buf: Buf::F32(_), ..
            } => DType::F32,
            #[cfg(feature = "cuda")]
            Storage::Cuda {
                buf: Buf::Bf16(_), ..
            } => DType::Bf16,
        }
    }

    /// Bytes the values take where they live (what one pass over the
    /// tensor reads).
    pub fn stored_bytes(&self) -> usize {
        match &self.storage {
            Storage::CpuHalf(h) => h.bytes(),
            _ if self.dtype() == DType::F32 => 4 * self.len(),
            _ => 2 * self.len(),
        }
    }

    /// Copies host data in for use by later ops; on a GPU the copy runs on
    /// the copy stream from pinned buffers, overlapping the compute stream,
    /// and the ops that read the tensor wait for it (an event marks it).
    /// Used for KV chunks loaded from storage.
    pub fn upload(data: &[f32], shape: &[usize], device: Device) -> Result<Tensor> {
        check_len("upload", shape, data.len())?;
        match device {
            Device::Cpu => Tensor::from_vec(data.to_vec(), shape, device),
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => Ok(Tensor {
                shape: shape.to_vec(),
                storage: Storage::Cuda {
                    ordinal: o,
                    buf: Buf::F32(cuda::backend(o)?.upload_async(data)?),
                },
            }),
        }
    }

    /// An f32 tensor from 16-bit floats (`bf16` true: bfloat16, else IEEE
    /// half) — a stored chunk's payload. On a GPU the bits are uploaded as
    /// they are (half the bytes of f32) on the copy stream and widened
    /// there; on the CPU they are widened on the host. Exact either way.
    pub fn from_half_bits(
        bits: &[u16],
        bf16: bool,
        shape: &[usize],
        device: Device,
    ) -> Result<Tensor> {
        check_len("from_half_bits", shape, bits.len())?;
        match device {
            Device::Cpu => Tensor::from_vec(
                bits.iter().map(|&b| half_to_f32(b, bf16)).collect(),
                shape,
                device,
            ),
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => Ok(Tensor {
                shape: shape.to_vec(),
                storage: Storage::Cuda {
                    ordinal: o,
                    buf: Buf::F32(cuda::backend(o)?.upload_half_async(bits, bf16)?),
                },
            }),
        }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], device: Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let storage = match device {
            Device::Cpu => Storage::Cpu(vec![0.0; n]),
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => Storage::Cuda {
                ordinal: o,
                buf: Buf::F32(cuda::backend(o)?.zeros(n)?),
            },
        };
        Ok(Tensor {
            shape: shape.to_vec(),
            storage,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        match self.storage {
            Storage::Cpu(_) | Storage::CpuHalf(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda { ordinal, .. } => Device::Cuda(ordinal),
        }
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.len() {
            return Err(shape_err(
                "reshape",
                format!("{:?} -> {shape:?} changes the element count", self.shape),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// A copy of the data in host memory, as f32 (waits for the GPU).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            Storage::CpuHalf(h) => Ok(h.to_f32()),
            #[cfg(feature = "cuda")]
            Storage::Cuda { ordinal, buf } => cuda::backend(*ordinal)?.download(buf),
        }
    }

    /// Moves the data out into host memory (no copy on the CPU).
    pub fn into_vec(self) -> Result<Vec<f32>> {
        match self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::CpuHalf(h) => Ok(h.to_f32()),
            #[cfg(feature = "cuda")]
            Storage::Cuda { ordinal, buf } => cuda::backend(ordinal)?.download(&buf),
        }
    }

    /// Host slice, when the tensor is f32 in host memory.
    pub fn as_slice(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Some(v),
            _ => None,
        }
    }

    /// Mutable host slice, when the tensor is f32 in host memory.
    pub fn as_mut_slice(&mut self) -> Option<&mut [f32]> {
        match &mut self.storage {
            Storage::Cpu(v) => Some(v),
            _ => None,
        }
    }

    /// Rows `start..end` along the first dimension, copied (as f32 for a
    /// 16-bit weight).
    pub fn rows(&self, start: usize, end: usize) -> Result<Tensor> {
        let rows = self.shape.first().copied().unwrap_or(0);
        if start > end || end > rows {
            return Err(shape_err(
                "rows",
                format!("{start}..{end} out of {rows} rows"),
            ));
        }
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        let storage = match &self.storage {
            Storage::Cpu(v) => Storage::Cpu(v[start * row..end * row].to_vec()),
            Storage::CpuHalf(h) => {
                let mut v = Vec::with_capacity((end - start) * row);
                (start..end).for_each(|r| h.row_f32(r, &mut v));
                Storage::Cpu(v)
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda { ordinal, buf } => Storage::Cuda {
                ordinal: *ordinal,
                buf: cuda::backend(*ordinal)?.copy_range(buf, start * row, end * row)?,
            },
        };
        Ok(Tensor { shape, storage })
    }

    /// Appends `other`'s rows after this tensor's (same trailing
    /// dimensions, same device). On the CPU the rows are copied onto the
    /// end of this tensor's own buffer, which grows like a `Vec`, so a
    /// tensor grown a row at a time (a decode step's KV) costs amortized
    /// O(1) a row; elsewhere this is [`Tensor::cat_rows`] of the two.
    pub fn append_rows(&mut self, other: &Tensor) -> Result<()> {
        if self.shape.is_empty() || other.shape.get(1..) != self.shape.get(1..) {
            return Err(shape_err(
                "append_rows",
                format!("{:?} onto {:?}", other.shape, self.shape),
            ));
        }
        if let (Storage::Cpu(v), Storage::Cpu(o)) = (&mut self.storage, &other.storage) {
            v.extend_from_slice(o);
            self.shape[0] += other.shape[0];
            return Ok(());
        }
        *self = Tensor::cat_rows(&[self, other])?;
        Ok(())
    }

    /// Stacks tensors along the first dimension (their other dimensions
    /// must match, all on one device): the inverse of [`Tensor::rows`].
    pub fn cat_rows(parts: &[&Tensor]) -> Result<Tensor> {
        let Some(first) = parts.first() else {
            return Err(shape_err("cat_rows", "no tensors to stack"));
        };
        let tail = &first.shape[1..];
        let device = first.device();
        let mut rows = 0;
        for p in parts {
            if matches!(p.storage, Storage::CpuHalf(_)) {
                return Err(KernelError::Dtype { op: "cat_rows" });
            }
            if p.shape.is_empty() || &p.shape[1..] != tail || p.device() != device {
                return Err(shape_err(
                    "cat_rows",
                    format!(
                        "{:?} on {} does not stack onto {:?} on {device}",
                        p.shape,
                        p.device(),
                        first.shape
                    ),
                ));
            }
            rows += p.shape[0];
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        let storage = match device {
            Device::Cpu => {
                let mut v = Vec::with_capacity(rows * tail.iter().product::<usize>());
                for p in parts {
                    v.extend_from_slice(p.cpu());
                }
                Storage::Cpu(v)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => {
                let bufs: Vec<&Buf> = parts
                    .iter()
                    .filter_map(|p| match &p.storage {
                        Storage::Cuda { buf, .. } => Some(buf),
                        _ => None,
                    })
                    .collect();
                Storage::Cuda {
                    ordinal: o,
                    buf: cuda::backend(o)?.concat(&bufs)?,
                }
            }
        };
        Ok(Tensor { shape, storage })
    }

    /// Host f32 data; empty for a tensor elsewhere or in 16 bits (ops
    /// call this only in their CPU arm, after checking device and dtype).
    pub(crate) fn cpu(&self) -> &[f32] {
        match &self.storage {
            Storage::Cpu(v) => v,
            _ => &[],
        }
    }

    pub(crate) fn cpu_mut(&mut self) -> &mut [f32] {
        match &mut self.storage {
            Storage::Cpu(v) => v,
            _ => &mut [],
        }
    }

    /// The 16-bit weight, when this is one on the CPU.
    pub(crate) fn cpu_half(&self) -> Option<&PackedHalf> {
        match &self.storage {
            Storage::CpuHalf(h) => Some(h),
            _ => None,
        }
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn from_cuda(ordinal: usize, buf: Buf, shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cuda { ordinal, buf },
        }
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_buf(&self) -> Result<&Buf> {
        match &self.storage {
            Storage::Cuda { buf, .. } => Ok(buf),
            _ => Err(KernelError::Device { op: "cuda" }),
        }
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_buf_mut(&mut self) -> Result<&mut Buf> {
        match &mut self.storage {
            Storage::Cuda { buf, .. } => Ok(buf),
            _ => Err(KernelError::Device { op: "cuda" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions_are_exact() {
        for b in [0u16, 0x8000, 0x3c00, 0xbc00, 0x0001, 0x03ff, 0x7bff, 0x7c00] {
            let f = half_to_f32(b, false);
            let back = half::f16::from_f32(f).to_bits();
            assert_eq!(back, b, "f16 {b:#06x} -> {f}");
        }
        for v in [0.0f32, -1.5, 3.140625, 1e-30, 6.0e4] {
            let b = to_bf16_bits(v);
            assert_eq!(b, half::bf16::from_f32(v).to_bits());
            assert_eq!(half_to_f32(b, true), half::bf16::from_f32(v).to_f32());
        }
    }

    #[test]
    fn parses_devices() {
        assert_eq!(Device::parse("cpu").ok(), Some(Device::Cpu));
        assert!(Device::parse("tpu").is_err());
        assert!(Device::parse("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(
            Device::parse("cuda:0")
                .err()
                .map(|e| e.to_string().contains("--features cuda"))
                .unwrap_or(false)
        );
        #[cfg(feature = "cuda")]
        assert_eq!(Device::parse("cuda:1").ok(), Some(Device::Cuda(1)));
    }
}
