//! A Llama-architecture decoder (RMSNorm, RoPE, grouped-query attention,
//! SwiGLU) over a KV cache held as chunks.

use std::path::Path;

use cake_kernels::{Device, RopeTable, Tensor, ops};

use crate::EngineError;
use crate::cache::{DeviceChunk, KvCache, KvLayout};
use crate::config::LlamaConfig;
use crate::weights::Checkpoint;

struct Layer {
    input_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
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

/// Where a forward pass spent its time (filled by
/// [`Model::forward_profiled`]; the CPU backend runs ops synchronously, so
/// wall time around each op is that op's time).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Profile {
    /// Seconds in the dense layers (Q, K, V, O projections and the MLP).
    pub dense_s: f64,
    /// Floating-point operations of those dense layers.
    pub dense_flops: f64,
    /// Seconds in attention.
    pub attention_s: f64,
    /// Seconds in everything else (norms, RoPE, activations, residuals).
    pub other_s: f64,
}

/// Where a lap's time goes.
#[derive(Clone, Copy)]
enum Part {
    Dense,
    Attention,
    Other,
}

/// Times the parts of a profiled forward with device marks: instants on
/// the CPU, events on a GPU's compute stream (GPU time of the ops between
/// two marks, no synchronisation while the forward runs). Does nothing
/// unless profiling.
struct Timer<'a> {
    prof: Option<&'a mut Profile>,
    device: Device,
    marks: Vec<(cake_kernels::Mark, Part)>,
    start: Option<cake_kernels::Mark>,
}

impl<'a> Timer<'a> {
    fn new(prof: Option<&'a mut Profile>, device: Device) -> Timer<'a> {
        let start = if prof.is_some() {
            device.mark().ok()
        } else {
            None
        };
        Timer {
            prof,
            device,
            marks: Vec::new(),
            start,
        }
    }

    /// The ops since the last lap were `part`.
    fn lap(&mut self, part: Part) {
        if self.prof.is_some()
            && let Ok(m) = self.device.mark()
        {
            self.marks.push((m, part));
        }
    }

    /// Adds the laps to the profile (waits for the device).
    fn finish(self, dense_flops: f64) {
        let (Some(p), Some(mut prev)) = (self.prof, self.start) else {
            return;
        };
        for (m, part) in self.marks {
            let secs = match m.seconds_since(&prev) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "profiling mark failed");
                    0.0
                }
            };
            match part {
                Part::Dense => p.dense_s += secs,
                Part::Attention => p.attention_s += secs,
                Part::Other => p.other_s += secs,
            }
            prev = m;
        }
        p.dense_flops += dense_flops;
    }
}

/// What a prefill produced.
#[derive(Debug, Clone)]
pub struct PrefillOutput {
    /// Logits of the last prompt token, `[vocab]`.
    pub last_logits: Vec<f32>,
}

impl Model {
    /// Loads a Hugging Face checkpoint folder (`config.json` and
    /// `model.safetensors` or its shards).
    pub fn load(dir: &Path, device: Device) -> Result<Model, EngineError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::Checkpoint {
            path: cfg_path.display().to_string(),
            reason: format!("cannot read config.json: {e}"),
        })?;
        let cfg = LlamaConfig::from_json(&text)?;
        let ckpt = Checkpoint::open(dir)?;
        Model::from_checkpoint(cfg, &ckpt, device, &text)
    }

    fn from_checkpoint(
        cfg: LlamaConfig,
        ckpt: &Checkpoint,
        device: Device,
        config_text: &str,
    ) -> Result<Model, EngineError> {
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let q = cfg.num_heads * cfg.head_dim;
        let kv = cfg.num_kv_heads * cfg.head_dim;
        let t = |name: &str, shape: &[usize]| -> Result<Tensor, EngineError> {
            Ok(Tensor::from_vec(ckpt.load(name, shape)?, shape, device)?)
        };
        // Matmul weights: bf16 on a GPU (cuBLAS, f32 accumulation), f32 on
        // the CPU.
        let w = |name: &str, shape: &[usize]| -> Result<Tensor, EngineError> {
            Ok(Tensor::weight(ckpt.load(name, shape)?, shape, device)?)
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                input_norm: t(&format!("{p}.input_layernorm.weight"), &[h])?,
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
        for (name, dtype, shape) in ckpt.metadata() {
            hasher.update(format!("{name}:{dtype}:{shape:?}\n").as_bytes());
        }
        Ok(Model {
            rope: cfg.rope.table(cfg.head_dim),
            embed: t("model.embed_tokens.weight", &[v, h])?,
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

    fn check_tokens(&self, cache: &KvCache, tokens: &[u32]) -> Result<(), EngineError> {
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

    /// Runs `tokens` at positions `cache.len()..`, appends their KV to the
    /// cache as one chunk, and returns the final normalised hidden states
    /// `[n, hidden]`.
    fn forward_hidden(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        prof: Option<&mut Profile>,
    ) -> Result<Tensor, EngineError> {
        self.check_tokens(cache, tokens)?;
        let mut tm = Timer::new(prof, self.device);
        let dense_flops =
            tokens.len() as f64 * self.cfg.dense_flops_per_token() / self.cfg.num_layers as f64;
        let n = tokens.len();
        let pos0 = cache.len();
        let c = &self.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut x = ops::embedding(&self.embed, tokens)?;
        let mut new_k = Vec::with_capacity(c.num_layers);
        let mut new_v = Vec::with_capacity(c.num_layers);
        for (l, layer) in self.layers.iter().enumerate() {
            let hn = ops::rms_norm(&x, &layer.input_norm, c.rms_norm_eps)?;
            tm.lap(Part::Other);
            let mut qkv = ops::matmul_t_many(&hn, &[&layer.wq, &layer.wk, &layer.wv])?.into_iter();
            let mut next = |shape: &[usize]| -> Result<Tensor, EngineError> {
                let t = qkv.next().ok_or_else(|| {
                    EngineError::KvLayout("matmul_t_many returned too few outputs".into())
                })?;
                Ok(t.reshape(shape)?)
            };
            let mut q = next(&[n, nh, hd])?;
            let mut k = next(&[n, nkv, hd])?;
            let v = next(&[n, nkv, hd])?;
            tm.lap(Part::Dense);
            ops::rope_inplace(&mut q, pos0, &self.rope)?;
            ops::rope_inplace(&mut k, pos0, &self.rope)?;
            tm.lap(Part::Other);
            let attn = {
                let (mut ks, mut vs) = cache.layer_views(l);
                ks.push(&k);
                vs.push(&v);
                ops::attention(&q, pos0, &ks, &vs, scale)?
            };
            tm.lap(Part::Attention);
            let o = ops::matmul_t(&attn.reshape(&[n, nh * hd])?, &layer.wo)?;
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
            new_k.push(k);
            new_v.push(v);
        }
        cache.push_device_chunk(DeviceChunk {
            tokens: n,
            k: new_k,
            v: new_v,
        });
        let out = ops::rms_norm(&x, &self.norm, c.rms_norm_eps)?;
        tm.lap(Part::Other);
        tm.finish(dense_flops * c.num_layers as f64);
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
        self.check_tokens(cache, tokens)?;
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
