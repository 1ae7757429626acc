//! Which tensors a checkpoint holds and how their seeded values are made.
//!
//! Values come in blocks of [`BLOCK`] elements, each from its own
//! generator seeded by (seed, tensor name, block index): the bytes do not
//! depend on the number of threads, the order tensors are written in, or
//! how they are sharded.
//!
//! Values are near-normal (a sum of four uniforms: the same mean and
//! variance, tails cut at 3.46σ), cheap enough to make 70 billion of.
//!
//! Scale: every projection is N(0, 1/fan_in), so a unit-RMS input gives a
//! unit-RMS output (≈ 0.016 for the real 4096-wide shapes, near the usual
//! 0.02), attention scores have spread ≈ 1 and so attend to something, and
//! `lm_head` rows are N(0, (LOGIT_STD)²/hidden) so that logits have a
//! standard deviation of about [`LOGIT_STD`]: peaked enough that sampling
//! differs from uniform, flat enough that it is not greedy. Norm weights
//! are 1.

use super::Dtype;
use super::preset::Preset;
use crate::Rng;

/// Elements per independently seeded block.
pub(crate) const BLOCK: usize = 1 << 20;

/// Standard deviation of the logits for a unit-RMS final hidden state.
const LOGIT_STD: f64 = 2.0;

/// Mean and standard deviation of the sum of four uniform 16-bit integers.
const IRWIN_HALL_MEAN: f32 = 2.0 * 65_535.0;
const IRWIN_HALL_STD: f32 = 37_837.23; // sqrt(4 * (65536² - 1) / 12)

/// How a tensor's values are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fill {
    /// N(0, std²).
    Normal(f32),
    /// Every element the same.
    Constant(f32),
}

/// One tensor of the checkpoint, in the order Hugging Face writes them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub fill: Fill,
}

impl TensorSpec {
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

fn normal(name: String, shape: [usize; 2], std: f64) -> TensorSpec {
    TensorSpec {
        name,
        shape: shape.to_vec(),
        fill: Fill::Normal(std as f32),
    }
}

fn ones(name: String, len: usize) -> TensorSpec {
    TensorSpec {
        name,
        shape: vec![len],
        fill: Fill::Constant(1.0),
    }
}

/// The tensors of `p`, with Hugging Face names and `[out, in]` shapes.
pub(crate) fn tensors(p: &Preset) -> Vec<TensorSpec> {
    let h = p.hidden_size;
    let q = p.num_heads * p.head_dim;
    let kv = p.num_kv_heads * p.head_dim;
    let ff = p.intermediate_size;
    let inv = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
    let head_std = LOGIT_STD / (h as f64).sqrt();
    // Tied embeddings are also the output layer, so they take its scale;
    // an untied input embedding is unit-variance (the first norm rescales
    // it anyway).
    let embed_std = if p.tie_word_embeddings { head_std } else { 1.0 };
    let mut out = vec![normal(
        "model.embed_tokens.weight".into(),
        [p.vocab_size, h],
        embed_std,
    )];
    for i in 0..p.num_layers {
        let l = |s: &str| format!("model.layers.{i}.{s}");
        out.push(ones(l("input_layernorm.weight"), h));
        out.push(normal(l("self_attn.q_proj.weight"), [q, h], inv(h)));
        out.push(normal(l("self_attn.k_proj.weight"), [kv, h], inv(h)));
        out.push(normal(l("self_attn.v_proj.weight"), [kv, h], inv(h)));
        out.push(normal(l("self_attn.o_proj.weight"), [h, q], inv(q)));
        out.push(ones(l("post_attention_layernorm.weight"), h));
        out.push(normal(l("mlp.gate_proj.weight"), [ff, h], inv(h)));
        out.push(normal(l("mlp.up_proj.weight"), [ff, h], inv(h)));
        out.push(normal(l("mlp.down_proj.weight"), [h, ff], inv(ff)));
    }
    out.push(ones("model.norm.weight".into(), h));
    if !p.tie_word_embeddings {
        out.push(normal("lm_head.weight".into(), [p.vocab_size, h], head_std));
    }
    out
}

/// The generator of block `block` of tensor `name`.
fn block_rng(seed: u64, name: &str, block: u64) -> Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"cake-init-v1");
    h.update(&seed.to_le_bytes());
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(&block.to_le_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    Rng::new(u64::from_le_bytes(first))
}

/// Appends elements `block * BLOCK ..` (`len` of them) of `t`, encoded in
/// `dtype`, to `out`.
pub(crate) fn encode_block(
    t: &TensorSpec,
    seed: u64,
    block: u64,
    len: usize,
    dtype: Dtype,
    out: &mut Vec<u8>,
) {
    out.reserve(len * dtype.size());
    match t.fill {
        Fill::Constant(v) => {
            for _ in 0..len {
                dtype.push(v, out);
            }
        }
        Fill::Normal(std) => {
            let mut rng = block_rng(seed, &t.name, block);
            // Irwin–Hall: the sum of four uniforms (16 bits each, from one
            // u64) is close to normal (bounded at ±3.46σ), and ~20x cheaper
            // than Box–Muller, which matters for 70 billion weights.
            let scale = std / IRWIN_HALL_STD;
            for _ in 0..len {
                let r = rng.next_u64();
                let sum = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
                dtype.push((sum as f32 - IRWIN_HALL_MEAN) * scale, out);
            }
        }
    }
}
