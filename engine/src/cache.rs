//! The KV cache of one sequence, held as a list of chunks so that any chunk
//! can come from storage instead of compute.

use cake_kernels::{Device, KeyBlocks, Tensor};

use crate::EngineError;

/// Shape of the KV cache a model produces per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvLayout {
    /// f32 values of K and V per token, all layers.
    pub fn values_per_token(&self) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim
    }
}

/// The KV of `tokens` consecutive positions, every layer, in host memory.
///
/// `data` is laid out `[layer][K|V][token][kv_head][head_dim]`, row-major:
/// this is the unit the chunk format encodes and the stores hold.
#[derive(Debug, Clone, PartialEq)]
pub struct KvChunk {
    pub layout: KvLayout,
    pub tokens: usize,
    pub data: Vec<f32>,
}

impl KvChunk {
    pub fn zeros(layout: KvLayout, tokens: usize) -> KvChunk {
        KvChunk {
            layout,
            tokens,
            data: vec![0.0; tokens * layout.values_per_token()],
        }
    }

    fn plane(&self) -> usize {
        self.tokens * self.layout.kv_heads * self.layout.head_dim
    }

    /// K of one layer, `[tokens, kv_heads, head_dim]`.
    pub fn k(&self, layer: usize) -> &[f32] {
        let p = self.plane();
        &self.data[2 * layer * p..(2 * layer + 1) * p]
    }

    /// V of one layer, `[tokens, kv_heads, head_dim]`.
    pub fn v(&self, layer: usize) -> &[f32] {
        let p = self.plane();
        &self.data[(2 * layer + 1) * p..(2 * layer + 2) * p]
    }

    /// Bytes of the payload as f32.
    pub fn f32_bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// One chunk of the cache as device tensors, per layer.
#[derive(Debug, Clone)]
pub(crate) struct DeviceChunk {
    pub tokens: usize,
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl DeviceChunk {
    /// A chunk from its `2 × layers` planes in [`KvChunk`] order (plane
    /// `p`: layer `p / 2`, K when even, V when odd); `make(p, shape)`
    /// makes plane `p`'s tensor.
    fn assemble(
        layout: KvLayout,
        tokens: usize,
        mut make: impl FnMut(usize, &[usize]) -> Result<Tensor, EngineError>,
    ) -> Result<DeviceChunk, EngineError> {
        let shape = [tokens, layout.kv_heads, layout.head_dim];
        let mut k = Vec::with_capacity(layout.layers);
        let mut v = Vec::with_capacity(layout.layers);
        for p in 0..2 * layout.layers {
            let t = make(p, &shape)?;
            if p % 2 == 0 { k.push(t) } else { v.push(t) }
        }
        Ok(DeviceChunk { tokens, k, v })
    }

    /// A host chunk's KV as tensors on `device`. On a GPU each plane is
    /// uploaded on the copy stream, overlapping compute; the ops that read
    /// it wait for its copy.
    pub(crate) fn from_host(chunk: &KvChunk, device: Device) -> Result<DeviceChunk, EngineError> {
        check_values(chunk.layout, chunk.tokens, chunk.data.len())?;
        let n = chunk.plane();
        DeviceChunk::assemble(chunk.layout, chunk.tokens, |p, shape| {
            Ok(Tensor::upload(
                &chunk.data[p * n..(p + 1) * n],
                shape,
                device,
            )?)
        })
    }

    /// A chunk whose planes `fill(p, out)` writes (`out` holds one plane's
    /// values). On the CPU each plane is written once, into its tensor's
    /// own buffer; on a GPU it is then uploaded as
    /// [`DeviceChunk::from_host`] does.
    pub(crate) fn from_planes(
        layout: KvLayout,
        tokens: usize,
        device: Device,
        mut fill: impl FnMut(usize, &mut [f32]),
    ) -> Result<DeviceChunk, EngineError> {
        let n = tokens * layout.kv_heads * layout.head_dim;
        DeviceChunk::assemble(layout, tokens, |p, shape| {
            let mut data = vec![0.0; n];
            fill(p, &mut data);
            Ok(if device.is_cpu() {
                Tensor::from_vec(data, shape, device)?
            } else {
                Tensor::upload(&data, shape, device)?
            })
        })
    }

    /// A chunk from 16-bit payload values (`bf16` true: bfloat16, else
    /// IEEE half) in [`KvChunk`] order: on a GPU the bits are uploaded as
    /// they are and widened there (the codec's decode on the GPU).
    pub(crate) fn from_half_bits(
        layout: KvLayout,
        tokens: usize,
        bits: &[u16],
        bf16: bool,
        device: Device,
    ) -> Result<DeviceChunk, EngineError> {
        check_values(layout, tokens, bits.len())?;
        let n = tokens * layout.kv_heads * layout.head_dim;
        DeviceChunk::assemble(layout, tokens, |p, shape| {
            Ok(Tensor::from_half_bits(
                &bits[p * n..(p + 1) * n],
                bf16,
                shape,
                device,
            )?)
        })
    }
}

fn check_values(layout: KvLayout, tokens: usize, values: usize) -> Result<(), EngineError> {
    if values != tokens * layout.values_per_token() {
        return Err(EngineError::KvLayout(format!(
            "chunk of {tokens} tokens carries {values} values"
        )));
    }
    Ok(())
}

/// The KV cache of one sequence: chunks in position order.
#[derive(Debug, Clone)]
pub struct KvCache {
    layout: KvLayout,
    device: Device,
    chunks: Vec<DeviceChunk>,
    len: usize,
    /// The last piece holds decoded tokens only (see
    /// [`KvCache::push_device_chunk`]), so the next decoded token joins it.
    tail_decoded: bool,
    /// On the CPU, each layer's whole key blocks as attention reads them
    /// ([`KeyBlocks`]; a second copy of `K`), packed by
    /// [`KvCache::pack_keys`] before a forward pass; empty on a GPU.
    key_blocks: Vec<KeyBlocks>,
}

impl KvCache {
    pub fn new(layout: KvLayout, device: Device) -> KvCache {
        KvCache {
            layout,
            device,
            chunks: Vec::new(),
            len: 0,
            tail_decoded: false,
            key_blocks: if device.is_cpu() {
                vec![KeyBlocks::new(); layout.layers]
            } else {
                Vec::new()
            },
        }
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Positions covered.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunks held.
    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Token counts of the chunks, in order.
    pub fn chunk_lens(&self) -> Vec<usize> {
        self.chunks.iter().map(|c| c.tokens).collect()
    }

    /// Appends a chunk that came from storage (or anywhere else) after the
    /// positions already held.
    pub fn push_chunk(&mut self, chunk: KvChunk) -> Result<(), EngineError> {
        if chunk.layout != self.layout {
            return Err(EngineError::KvLayout(format!(
                "chunk layout {:?} does not match the model's {:?}",
                chunk.layout, self.layout
            )));
        }
        let c = DeviceChunk::from_host(&chunk, self.device)?;
        self.len += c.tokens;
        self.tail_decoded = false;
        self.chunks.push(c);
        Ok(())
    }

    /// Appends a chunk already on the cache's device (a load the I/O side
    /// made ready).
    pub(crate) fn push_loaded(&mut self, c: DeviceChunk) -> Result<(), EngineError> {
        let ok = c.k.len() == self.layout.layers
            && c.v.len() == self.layout.layers
            && c.k.iter().chain(&c.v).all(|t| {
                t.device() == self.device
                    && t.shape() == [c.tokens, self.layout.kv_heads, self.layout.head_dim]
            });
        if !ok {
            return Err(EngineError::KvLayout(
                "a loaded chunk does not match the cache's layout or device".into(),
            ));
        }
        self.len += c.tokens;
        self.tail_decoded = false;
        self.chunks.push(c);
        Ok(())
    }

    /// Copies chunk `i` out to host memory (`None` past the last chunk).
    pub fn chunk(&self, i: usize) -> Result<Option<KvChunk>, EngineError> {
        let Some(c) = self.chunks.get(i) else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(c.tokens * self.layout.values_per_token());
        for l in 0..self.layout.layers {
            data.extend(c.k[l].to_vec()?);
            data.extend(c.v[l].to_vec()?);
        }
        Ok(Some(KvChunk {
            layout: self.layout,
            tokens: c.tokens,
            data,
        }))
    }

    /// Positions `start..end` copied out to host memory as one chunk,
    /// across however many pieces hold them (decoding appends one piece per
    /// token).
    pub fn range(&self, start: usize, end: usize) -> Result<KvChunk, EngineError> {
        if start > end || end > self.len {
            return Err(EngineError::KvLayout(format!(
                "positions {start}..{end} of a cache of {}",
                self.len
            )));
        }
        let tokens = end - start;
        let mut data = Vec::with_capacity(tokens * self.layout.values_per_token());
        for l in 0..self.layout.layers {
            for k in [true, false] {
                let mut pos = 0;
                for c in &self.chunks {
                    let (a, b) = (pos, pos + c.tokens);
                    pos = b;
                    let (from, to) = (a.max(start), b.min(end));
                    if from >= to {
                        continue;
                    }
                    let t = if k { &c.k[l] } else { &c.v[l] };
                    if (from, to) == (a, b) {
                        data.extend(t.to_vec()?);
                    } else {
                        data.extend(t.rows(from - a, to - a)?.to_vec()?);
                    }
                }
            }
        }
        Ok(KvChunk {
            layout: self.layout,
            tokens,
            data,
        })
    }

    /// Positions `start..end` as a chunk on the cache's device (a copy):
    /// the piece itself when one piece holds exactly them.
    pub(crate) fn device_range(
        &self,
        start: usize,
        end: usize,
    ) -> Result<DeviceChunk, EngineError> {
        let mut pos = 0;
        for c in &self.chunks {
            if pos == start && pos + c.tokens == end {
                return Ok(c.clone());
            }
            pos += c.tokens;
            if pos > start {
                break;
            }
        }
        DeviceChunk::from_host(&self.range(start, end)?, self.device)
    }

    /// Drops positions from `len` on (whole chunks only past it; a chunk
    /// straddling `len` is cut).
    pub fn truncate(&mut self, len: usize) -> Result<(), EngineError> {
        while self.len > len {
            // A cut piece may be a prompt's: later tokens start their own.
            self.tail_decoded = false;
            let Some(last) = self.chunks.pop() else { break };
            self.len -= last.tokens;
            if self.len < len {
                let keep = len - self.len;
                let k = last
                    .k
                    .iter()
                    .map(|t| t.rows(0, keep))
                    .collect::<Result<Vec<_>, _>>()?;
                let v = last
                    .v
                    .iter()
                    .map(|t| t.rows(0, keep))
                    .collect::<Result<Vec<_>, _>>()?;
                self.chunks.push(DeviceChunk { tokens: keep, k, v });
                self.len = len;
            }
        }
        for b in &mut self.key_blocks {
            b.truncate(self.len);
        }
        Ok(())
    }

    /// Appends what a forward pass computed. A decode step computes one
    /// token; on the CPU consecutive decoded tokens join one piece, grown in
    /// place, instead of one piece each: attention then reads their keys and
    /// values where they are (a key block inside one piece is not copied)
    /// and walks a few pieces instead of one per token. Anything else starts
    /// a piece of its own, so prompt chunks keep their boundaries.
    pub(crate) fn push_device_chunk(&mut self, c: DeviceChunk) -> Result<(), EngineError> {
        self.len += c.tokens;
        let decoded = c.tokens == 1 && self.device.is_cpu();
        if decoded
            && self.tail_decoded
            && let Some(last) = self.chunks.last_mut()
        {
            for (t, n) in last
                .k
                .iter_mut()
                .zip(&c.k)
                .chain(last.v.iter_mut().zip(&c.v))
            {
                t.append_rows(n)?;
            }
            last.tokens += c.tokens;
            return Ok(());
        }
        self.tail_decoded = decoded;
        self.chunks.push(c);
        Ok(())
    }

    /// Packs each layer's whole key blocks not packed yet (on the CPU), so
    /// that attention reads them as they are: a decode step then packs
    /// only its last, partial block instead of the whole K cache.
    pub(crate) fn pack_keys(&mut self) -> Result<(), EngineError> {
        for (l, b) in self.key_blocks.iter_mut().enumerate() {
            if b.positions() + KeyBlocks::POSITIONS > self.len {
                continue;
            }
            let keys: Vec<&Tensor> = self.chunks.iter().map(|c| &c.k[l]).collect();
            b.extend(&keys)?;
        }
        Ok(())
    }

    /// Layer `layer`'s packed key blocks (`None` on a GPU).
    pub(crate) fn key_blocks(&self, layer: usize) -> Option<&KeyBlocks> {
        self.key_blocks.get(layer)
    }

    pub(crate) fn layer_views(&self, layer: usize) -> (Vec<&Tensor>, Vec<&Tensor>) {
        self.chunks
            .iter()
            .map(|c| (&c.k[layer], &c.v[layer]))
            .unzip()
    }

    pub(crate) fn device(&self) -> Device {
        self.device
    }
}
