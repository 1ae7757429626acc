//! A Llama-architecture decoder (RMSNorm, RoPE, grouped-query attention,
//! SwiGLU) over a KV cache held as chunks, with the Qwen2 (bias on q/k/v)
//! and Qwen3 (RMSNorm of q and k per head) variants.

use std::path::Path;

use cake_kernels::{Device, RopeTable, Tensor, ops};

use crate::EngineError;
use crate::cache::{DeviceChunk, KvCache, KvLayout};
use crate::config::LlamaConfig;
use crate::weights::{Checkpoint, Loaded, TensorSource, WeightsDtype};

mod profile;

pub use profile::Profile;
use profile::{Part, Timer};

struct Layer {
    input_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    /// q, k, v biases as `[1, out]` rows (Qwen2).
    bias: Option<[Tensor; 3]>,
    /// Per-head RMSNorm weights of q and k, `[head_dim]` (Qwen3).
    qk_norm: Option<[Tensor; 2]>,
    wo: Tensor,
    post_norm: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
}

/// A loaded model, ready to prefill and decode. Immutable: many requests
/// share one `Model`, each with its own [`KvCache`].
pub struct Model {
    cfg: LlamaConfig,
    device: Device,
    rope: RopeTable,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `None` when the LM head is tied to the embeddings.
    lm_head: Option<Tensor>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.cfg)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Which logits a [`BatchItem`] wants back from [`Model::forward_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (a prefill chunk whose logits nobody reads).
    None,
    /// The last token's (the end of a prompt, a decode step).
    Last,
    /// Every token's (prompt logprobs).
    All,
}

/// One sequence's part of a batched step.
pub struct BatchItem<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

impl BatchItem<'_> {
    /// Rows of logits this item gets back (0, 1 or one per token).
    pub fn logit_rows(&self) -> usize {
        match self.logits {
            Logits::None => 0,
            Logits::Last => 1,
            Logits::All => self.tokens.len(),
        }
    }
}

/// `t` cut along its first dimension into pieces of `lens` rows (no copy
/// for a single piece).
fn split_rows(t: Tensor, lens: &[usize]) -> Result<Vec<Tensor>, EngineError> {
    if lens.len() == 1 {
        return Ok(vec![t]);
    }
    let mut out = Vec::with_capacity(lens.len());
    let mut off = 0;
    for &n in lens {
        out.push(t.rows(off, off + n)?);
        off += n;
    }
    Ok(out)
}

/// The inverse of [`split_rows`] (no copy for a single piece).
fn stack_rows(mut parts: Vec<Tensor>) -> Result<Tensor, EngineError> {
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    let refs: Vec<&Tensor> = parts.iter().collect();
    Ok(Tensor::cat_rows(&refs)?)
}

/// What a prefill produced.
#[derive(Debug, Clone)]
pub struct PrefillOutput {
    /// Logits of the last prompt token, `[vocab]`.
    pub last_logits: Vec<f32>,
}

impl Model {
    /// Loads a Hugging Face checkpoint folder (`config.json` and
    /// `model.safetensors` or its shards), or a GGUF file, with the
    /// weights held as [`WeightsDtype::Auto`] says.
    pub fn load(dir: &Path, device: Device) -> Result<Model, EngineError> {
        Model::load_with(dir, device, WeightsDtype::Auto)
    }

    /// [`Model::load`] with the matmul weights held as `weights` says.
    pub fn load_with(
        dir: &Path,
        device: Device,
        weights: WeightsDtype,
    ) -> Result<Model, EngineError> {
        if crate::gguf::is_gguf(dir) {
            let file = crate::gguf::GgufFile::open(dir)?;
            let cfg = crate::gguf::config(&file)?;
            let source = crate::gguf::GgufWeights::new(&file, &cfg, weights)?;
            let rope = crate::gguf::rope_with_factors(&file, &cfg)?;
            let text = format!("gguf:{cfg:?}");
            return Model::from_checkpoint(cfg, &source, device, weights, &text, rope);
        }
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::Checkpoint {
            path: cfg_path.display().to_string(),
            reason: format!("cannot read config.json: {e}"),
        })?;
        let cfg = LlamaConfig::from_json(&text)?;
        let ckpt = Checkpoint::open(dir)?;
        Model::from_checkpoint(cfg, &ckpt, device, weights, &text, None)
    }

    fn from_checkpoint(
        cfg: LlamaConfig,
        ckpt: &dyn TensorSource,
        device: Device,
        weights: WeightsDtype,
        config_text: &str,
        // A rotary table other than the config's (a GGUF file's factors).
        rope: Option<RopeTable>,
    ) -> Result<Model, EngineError> {
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let q = cfg.num_heads * cfg.head_dim;
        let kv = cfg.num_kv_heads * cfg.head_dim;
        let t = |name: &str, shape: &[usize]| -> Result<Tensor, EngineError> {
            Ok(Tensor::from_vec(ckpt.load(name, shape)?, shape, device)?)
        };
        // Matmul weights: bf16 on a GPU (cuBLAS, f32 accumulation); on the
        // CPU as `weights` says (16-bit ones are widened as they are read).
        let w = |name: &str, shape: &[usize]| -> Result<Tensor, EngineError> {
            Ok(match ckpt.load_weight(name, shape, weights)? {
                Loaded::F32(v) => Tensor::weight(v, shape, device)?,
                Loaded::Half { bits, bf16 } => Tensor::weight_half(bits, bf16, shape, device)?,
            })
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let bias = if cfg.attention_bias {
                let b = |name: &str, n: usize| t(&format!("{p}.self_attn.{name}.bias"), &[n]);
                Some([
                    b("q_proj", q)?.reshape(&[1, q])?,
                    b("k_proj", kv)?.reshape(&[1, kv])?,
                    b("v_proj", kv)?.reshape(&[1, kv])?,
                ])
            } else {
                None
            };
            let qk_norm = if cfg.qk_norm {
                let n = |name: &str| t(&format!("{p}.self_attn.{name}.weight"), &[cfg.head_dim]);
                Some([n("q_norm")?, n("k_norm")?])
            } else {
                None
            };
            layers.push(Layer {
                input_norm: t(&format!("{p}.input_layernorm.weight"), &[h])?,
                bias,
                qk_norm,
                wq: w(&format!("{p}.self_attn.q_proj.weight"), &[q, h])?,
                wk: w(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?,
                wv: w(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?,
                wo: w(&format!("{p}.self_attn.o_proj.weight"), &[h, q])?,
                post_norm: t(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                w_gate: w(&format!("{p}.mlp.gate_proj.weight"), &[i, h])?,
                w_up: w(&format!("{p}.mlp.up_proj.weight"), &[i, h])?,
                w_down: w(&format!("{p}.mlp.down_proj.weight"), &[h, i])?,
            });
        }
        let lm_head = if cfg.tie_word_embeddings && !ckpt.contains("lm_head.weight") {
            None
        } else {
            Some(w("lm_head.weight", &[v, h])?)
        };
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"cake-model-fingerprint-v1\0");
        hasher.update(config_text.as_bytes());
        // `auto` and `f32` compute the same bits; `bf16` may round the
        // weights, so its KV must not be mistaken for theirs.
        if weights == WeightsDtype::Bf16 {
            hasher.update(b"weights:bf16\n");
        }
        for (name, dtype, shape) in ckpt.metadata() {
            hasher.update(format!("{name}:{dtype}:{shape:?}\n").as_bytes());
        }
        // The embedding is a matmul weight too when it is the LM head; on
        // a GPU its lookups need f32.
        let embed = if device.is_cpu() {
            w("model.embed_tokens.weight", &[v, h])?
        } else {
            t("model.embed_tokens.weight", &[v, h])?
        };
        Ok(Model {
            rope: rope.unwrap_or_else(|| cfg.rope.table(cfg.head_dim)),
            embed,
            norm: t("model.norm.weight", &[h])?,
            layers,
            lm_head,
            fingerprint: *hasher.finalize().as_bytes(),
            device,
            cfg,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Bytes of weights one decode step reads, as the model holds them:
    /// every matrix of the layers and the LM head (the tied embedding
    /// when there is none), the norms and biases; not the embedding's
    /// few looked-up rows.
    pub fn step_weight_bytes(&self) -> u64 {
        let mut n = self.norm.stored_bytes();
        for l in &self.layers {
            for t in [
                &l.input_norm,
                &l.wq,
                &l.wk,
                &l.wv,
                &l.wo,
                &l.post_norm,
                &l.w_gate,
                &l.w_up,
                &l.w_down,
            ] {
                n += t.stored_bytes();
            }
            n += l
                .bias
                .iter()
                .flatten()
                .map(Tensor::stored_bytes)
                .sum::<usize>();
            n += l
                .qk_norm
                .iter()
                .flatten()
                .map(Tensor::stored_bytes)
                .sum::<usize>();
        }
        n += self.lm_head.as_ref().unwrap_or(&self.embed).stored_bytes();
        n as u64
    }

    /// Identifies the model for KV cache keys: a hash of its config and its
    /// tensors' names, dtypes and shapes.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    pub fn layout(&self) -> KvLayout {
        KvLayout {
            layers: self.cfg.num_layers,
            kv_heads: self.cfg.num_kv_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layout(), self.device)
    }

    /// The context length the model accepts.
    pub fn max_context(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    /// Floating-point operations of running `n` tokens at positions
    /// `pos0..` (dense layers and attention) plus `logit_rows` rows of the
    /// LM head: how a batched step's time is shared among its sequences.
    pub fn step_flops(&self, pos0: usize, n: usize, logit_rows: usize) -> f64 {
        let c = &self.cfg;
        let n = n as f64;
        // QKᵀ and PV: 2 flops per multiply-add, each query against the keys
        // up to its own position.
        let keys = pos0 as f64 + (n + 1.0) / 2.0;
        let attention = 4.0 * (c.num_heads * c.head_dim * c.num_layers) as f64 * n * keys;
        let head = 2.0 * (c.hidden_size * c.vocab_size) as f64 * logit_rows as f64;
        n * c.dense_flops_per_token() + attention + head
    }

    /// Checks that `tokens` can run after what `cache` holds: the cache
    /// fits this model and device, the context has room, every id is in
    /// the vocabulary. Every forward checks this; a batch checks each
    /// sequence first so that one bad sequence fails alone.
    pub fn check_input(&self, cache: &KvCache, tokens: &[u32]) -> Result<(), EngineError> {
        if cache.layout() != self.layout() || cache.device() != self.device {
            return Err(EngineError::KvLayout(
                "the KV cache was made for another model or device".into(),
            ));
        }
        if cache.len() + tokens.len() > self.max_context() {
            return Err(EngineError::PromptTooLong {
                tokens: cache.len() + tokens.len(),
                extra: 0,
                context: self.max_context(),
            });
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(EngineError::BadRequest(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Runs every item's tokens at positions `cache.len()..` of its own
    /// cache, appends their KV to that cache as one chunk, and returns the
    /// final normalised hidden states of all items' rows, stacked in item
    /// order, `[total tokens, hidden]`.
    ///
    /// Items share every op that treats rows independently (embedding,
    /// norms, the dense layers): one GEMM per weight for the whole batch,
    /// which reads each weight once however many sequences the step holds.
    /// RoPE and attention run per item, against that item's cache. Rows do
    /// not depend on the batch (the CPU GEMM's rows are independent of its
    /// row count), so a batched row is bitwise the row run alone on the CPU.
    ///
    /// The whole pass runs on a compute thread
    /// ([`cake_kernels::on_compute_threads`]): one hand-over a step rather
    /// than one per op.
    fn forward_hidden_batch(
        &self,
        items: &mut [BatchItem<'_>],
        prof: Option<&mut Profile>,
    ) -> Result<Tensor, EngineError> {
        cake_kernels::on_compute_threads(|| self.forward_hidden_batch_here(items, prof))
    }

    fn forward_hidden_batch_here(
        &self,
        items: &mut [BatchItem<'_>],
        prof: Option<&mut Profile>,
    ) -> Result<Tensor, EngineError> {
        if items.is_empty() {
            return Err(EngineError::Internal("no sequences to run".into()));
        }
        for it in items.iter_mut() {
            if it.tokens.is_empty() {
                return Err(EngineError::Internal("no tokens to run".into()));
            }
            self.check_input(it.cache, it.tokens)?;
            it.cache.pack_keys()?;
        }
        let lens: Vec<usize> = items.iter().map(|it| it.tokens.len()).collect();
        let total: usize = lens.iter().sum();
        let mut tm = Timer::new(prof, self.device);
        let c = &self.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut x = if items.len() == 1 {
            ops::embedding(&self.embed, items[0].tokens)?
        } else {
            let ids: Vec<u32> = items
                .iter()
                .flat_map(|it| it.tokens.iter().copied())
                .collect();
            ops::embedding(&self.embed, &ids)?
        };
        let mut new_k: Vec<Vec<Tensor>> = items
            .iter()
            .map(|_| Vec::with_capacity(c.num_layers))
            .collect();
        let mut new_v = new_k.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            let hn = ops::rms_norm(&x, &layer.input_norm, c.rms_norm_eps)?;
            tm.lap(Part::Other);
            let [mut q, mut k, mut v]: [Tensor; 3] =
                ops::matmul_t_many(&hn, &[&layer.wq, &layer.wk, &layer.wv])?
                    .try_into()
                    .map_err(|_| {
                        EngineError::KvLayout("matmul_t_many returned too few outputs".into())
                    })?;
            if let Some([bq, bk, bv]) = &layer.bias {
                // Each bias row repeated for every token (an embedding
                // lookup of row 0 does that on any device), then added.
                let rows = vec![0u32; total];
                ops::add_inplace(&mut q, &ops::embedding(bq, &rows)?)?;
                ops::add_inplace(&mut k, &ops::embedding(bk, &rows)?)?;
                ops::add_inplace(&mut v, &ops::embedding(bv, &rows)?)?;
            }
            let (qs, ks, vs) = (
                split_rows(q, &lens)?,
                split_rows(k, &lens)?,
                split_rows(v, &lens)?,
            );
            tm.lap(Part::Dense);
            // RoPE per item (its own positions), then every item's
            // attention in one call: one parallel region for the batch.
            let mut qs_roped = Vec::with_capacity(items.len());
            for (j, ((it, q), (k, v))) in
                items.iter().zip(qs).zip(ks.into_iter().zip(vs)).enumerate()
            {
                let n = lens[j];
                let pos0 = it.cache.len();
                let mut q = q.reshape(&[n, nh, hd])?;
                let mut k = k.reshape(&[n, nkv, hd])?;
                let v = v.reshape(&[n, nkv, hd])?;
                if let Some([nq, nk]) = &layer.qk_norm {
                    q = ops::rms_norm(&q, nq, c.rms_norm_eps)?;
                    k = ops::rms_norm(&k, nk, c.rms_norm_eps)?;
                }
                ops::rope_inplace(&mut q, pos0, &self.rope)?;
                ops::rope_inplace(&mut k, pos0, &self.rope)?;
                qs_roped.push(q);
                new_k[j].push(k);
                new_v[j].push(v);
            }
            tm.lap(Part::Other);
            let views: Vec<(Vec<&Tensor>, Vec<&Tensor>)> = items
                .iter()
                .enumerate()
                .map(|(j, it)| {
                    let (mut kv_k, mut kv_v) = it.cache.layer_views(l);
                    kv_k.push(&new_k[j][l]);
                    kv_v.push(&new_v[j][l]);
                    (kv_k, kv_v)
                })
                .collect();
            let calls: Vec<ops::Attn<'_>> = items
                .iter()
                .zip(&qs_roped)
                .zip(&views)
                .map(|((it, q), (keys, values))| ops::Attn {
                    q,
                    q_pos0: it.cache.len(),
                    keys,
                    values,
                    key_blocks: it.cache.key_blocks(l),
                })
                .collect();
            let outs = ops::attention_many(&calls, scale)?
                .into_iter()
                .zip(&lens)
                .map(|(a, &n)| a.reshape(&[n, nh * hd]))
                .collect::<Result<Vec<_>, _>>()?;
            drop(calls);
            drop(views);
            tm.lap(Part::Attention);
            let attn = stack_rows(outs)?;
            let o = ops::matmul_t(&attn, &layer.wo)?;
            tm.lap(Part::Dense);
            ops::add_inplace(&mut x, &o)?;
            let hn = ops::rms_norm(&x, &layer.post_norm, c.rms_norm_eps)?;
            tm.lap(Part::Other);
            let [gate, up]: [Tensor; 2] = ops::matmul_t_many(&hn, &[&layer.w_gate, &layer.w_up])?
                .try_into()
                .map_err(|_| {
                    EngineError::KvLayout("matmul_t_many returned too few outputs".into())
                })?;
            tm.lap(Part::Dense);
            let act = ops::silu_mul(&gate, &up)?;
            tm.lap(Part::Other);
            let down = ops::matmul_t(&act, &layer.w_down)?;
            tm.lap(Part::Dense);
            ops::add_inplace(&mut x, &down)?;
        }
        for ((it, k), v) in items.iter_mut().zip(new_k).zip(new_v) {
            it.cache.push_device_chunk(DeviceChunk {
                tokens: it.tokens.len(),
                k,
                v,
            })?;
        }
        let out = ops::rms_norm(&x, &self.norm, c.rms_norm_eps)?;
        tm.lap(Part::Other);
        tm.finish(total as f64 * c.dense_flops_per_token());
        Ok(out)
    }

    /// Runs `tokens` at positions `cache.len()..`, appends their KV to the
    /// cache as one chunk, and returns the final normalised hidden states
    /// `[n, hidden]`.
    fn forward_hidden(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        prof: Option<&mut Profile>,
    ) -> Result<Tensor, EngineError> {
        let mut one = [BatchItem {
            cache,
            tokens,
            logits: Logits::None,
        }];
        self.forward_hidden_batch(&mut one, prof)
    }

    /// One step of several sequences: runs each item's tokens after what
    /// its cache holds (see `forward_hidden_batch` for what is shared) and
    /// returns, per item, the logits it asked for: `[1, vocab]` for
    /// [`Logits::Last`], `[n, vocab]` for [`Logits::All`], `None` for
    /// [`Logits::None`]. The LM head runs once, on the wanted rows only.
    /// Waits for the device, so the call's duration is the step's.
    pub fn forward_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Option<Tensor>>, EngineError> {
        let h = self.forward_hidden_batch(items, None)?;
        let counts: Vec<usize> = items.iter().map(BatchItem::logit_rows).collect();
        let mut wanted = Vec::new();
        if counts.iter().sum::<usize>() == h.shape()[0] {
            // Every row is wanted: no copy.
            wanted.push(h);
        } else {
            let mut off = 0;
            for (it, &rows) in items.iter().zip(&counts) {
                let n = it.tokens.len();
                if rows > 0 {
                    wanted.push(h.rows(off + n - rows, off + n)?);
                }
                off += n;
            }
        }
        let mut out = Vec::with_capacity(items.len());
        if wanted.is_empty() {
            out.resize(items.len(), None);
        } else {
            let logits = self.lm_head(&stack_rows(wanted)?)?;
            let lens: Vec<usize> = counts.iter().copied().filter(|&r| r > 0).collect();
            let mut parts = split_rows(logits, &lens)?.into_iter();
            for &r in &counts {
                out.push(if r > 0 { parts.next() } else { None });
            }
        }
        self.device.synchronize()?;
        Ok(out)
    }

    /// Runs `tokens` through the layers (no LM head), appending their KV,
    /// and adds where the time went to `prof`.
    pub fn forward_profiled(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        prof: &mut Profile,
    ) -> Result<(), EngineError> {
        self.forward_hidden(cache, tokens, Some(prof)).map(|_| ())
    }

    fn lm_head(&self, hidden: &Tensor) -> Result<Tensor, EngineError> {
        Ok(ops::matmul_t(
            hidden,
            self.lm_head.as_ref().unwrap_or(&self.embed),
        )?)
    }

    /// Runs `tokens` after what the cache holds and returns the logits of
    /// every one of them, `[n, vocab]`.
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Tensor, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::BadRequest("no tokens to run".into()));
        }
        let h = self.forward_hidden(cache, tokens, None)?;
        self.lm_head(&h)
    }

    /// Like [`Model::forward`], but returns only the last token's logits
    /// (the LM head runs on one row).
    pub fn forward_last(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
    ) -> Result<Vec<f32>, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::BadRequest("no tokens to run".into()));
        }
        let h = self.forward_hidden(cache, tokens, None)?;
        let last = h.rows(tokens.len() - 1, tokens.len())?;
        Ok(self.lm_head(&last)?.into_vec()?)
    }

    /// Runs `tokens` through the layers, appending their KV, without the
    /// LM head: the compute side of a chunk whose logits nobody needs.
    pub fn forward_no_logits(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
    ) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Ok(());
        }
        self.forward_hidden(cache, tokens, None)?;
        // The chunk is done when this returns (the scheduler times it).
        Ok(self.device.synchronize()?)
    }

    /// Prefills `tokens` after what the cache holds, in chunks whose
    /// boundaries fall on multiples of `chunk_tokens` (absolute positions),
    /// so every full chunk in the cache is one storable unit. Returns the
    /// last token's logits.
    pub fn prefill(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        chunk_tokens: usize,
    ) -> Result<PrefillOutput, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::BadRequest("empty prompt".into()));
        }
        if chunk_tokens == 0 {
            return Err(EngineError::BadRequest(
                "chunk_tokens must be positive".into(),
            ));
        }
        self.check_input(cache, tokens)?;
        let mut done = 0;
        while done < tokens.len() {
            let pos = cache.len();
            let room = chunk_tokens - pos % chunk_tokens;
            let end = (done + room).min(tokens.len());
            if end == tokens.len() {
                let last_logits = self.forward_last(cache, &tokens[done..end])?;
                return Ok(PrefillOutput { last_logits });
            }
            self.forward_no_logits(cache, &tokens[done..end])?;
            done = end;
        }
        Err(EngineError::BadRequest("empty prompt".into()))
    }
}
