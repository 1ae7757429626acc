//! Device memory of the CUDA backend: plain copies on the compute stream,
//! and uploads of stored chunks on the copy stream through pinned staging
//! buffers.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

use super::{Backend, Buf, STAGING_BYTES, elementwise, err};
use crate::Result;

impl Backend {
    pub(crate) fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.compute
            .clone_htod(data)
            .map_err(|e| err("copying to the GPU", e))
    }

    /// `inv_freq` on the device, uploaded on first use.
    pub(crate) fn rope_freqs(&self, inv_freq: &[f32]) -> Result<Arc<CudaSlice<f32>>> {
        let key: Vec<u32> = inv_freq.iter().map(|f| f.to_bits()).collect();
        let mut cache = self.rope_freqs.lock();
        if let Some(d) = cache.get(&key) {
            return Ok(d.clone());
        }
        let d = Arc::new(self.upload(inv_freq)?);
        cache.insert(key, d.clone());
        Ok(d)
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

    pub(super) fn alloc_f32(&self, n: usize) -> Result<CudaSlice<f32>> {
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

    /// One f32 buffer holding `parts` back to back (activations only: the
    /// bf16 buffers are weights, which are never stacked).
    pub(crate) fn concat(&self, parts: &[&Buf]) -> Result<Buf> {
        let mut srcs = Vec::with_capacity(parts.len());
        for p in parts {
            match p {
                Buf::F32(s) => srcs.push(s),
                Buf::Bf16(_) => {
                    return Err(crate::KernelError::Dtype { op: "cat_rows" });
                }
            }
        }
        let total: usize = srcs.iter().map(|s| s.len()).sum();
        // Every value is written by the copies below.
        let mut out = self.alloc_f32(total)?;
        let mut at = 0;
        for s in srcs {
            let n = s.len();
            self.compute
                .memcpy_dtod(s, &mut out.slice_mut(at..at + n))
                .map_err(|e| err("copying on the GPU", e))?;
            at += n;
        }
        Ok(Buf::F32(out))
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
            let mut pool = self.staging.lock();
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
        self.staging.lock().extend(bufs);
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
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: f32 and u16 are plain data without padding; the byte view
    // covers exactly the slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}
