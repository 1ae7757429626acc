//! A model's shape from GGUF metadata (`{arch}.embedding_length` and the
//! rest, as llama.cpp's converter writes them).

use super::file::{GgufFile, Meta};
use crate::EngineError;
use crate::config::{LlamaConfig, RopeConfig};

/// Architectures whose GGUF files Cake reads.
const ARCHS: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// Whether llama.cpp's converter permuted this architecture's Q and K rows
/// (for its adjacent-pairs RoPE; Qwen models use the halves layout as is).
pub(crate) fn permutes_qk(arch: &str) -> bool {
    matches!(arch, "llama" | "mistral")
}

fn cfg_err(file: &GgufFile, reason: String) -> EngineError {
    EngineError::Checkpoint {
        path: file.path().display().to_string(),
        reason,
    }
}

/// The architecture a GGUF file names (`general.architecture`).
pub fn architecture(file: &GgufFile) -> Result<String, EngineError> {
    file.get("general.architecture")
        .and_then(Meta::as_str)
        .map(str::to_string)
        .ok_or_else(|| cfg_err(file, "no `general.architecture` in the metadata".into()))
}

/// The model config a GGUF file's metadata describes.
pub fn config(file: &GgufFile) -> Result<LlamaConfig, EngineError> {
    let arch = architecture(file)?;
    if !ARCHS.contains(&arch.as_str()) {
        return Err(cfg_err(
            file,
            format!(
                "architecture `{arch}` is not supported (supported: {})",
                ARCHS.join(", ")
            ),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let uint = |k: &str| file.get(&key(k)).and_then(Meta::as_u64).map(|v| v as usize);
    let need = |k: &str| match uint(k) {
        Some(0) => Err(cfg_err(file, format!("`{}` must be positive", key(k)))),
        Some(v) => Ok(v),
        None => Err(cfg_err(file, format!("missing `{}`", key(k)))),
    };
    let hidden_size = need("embedding_length")?;
    let num_heads = need("attention.head_count")?;
    let num_kv_heads = uint("attention.head_count_kv").unwrap_or(num_heads);
    let head_dim = uint("attention.key_length").unwrap_or(hidden_size / num_heads);
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 || head_dim == 0 || head_dim % 2 != 0 {
        return Err(cfg_err(
            file,
            format!(
                "heads {num_heads}, kv heads {num_kv_heads}, head dim {head_dim}: the heads must be a multiple of the kv heads and the head dim even"
            ),
        ));
    }
    let float = |k: &str| file.get(&key(k)).and_then(Meta::as_f64);
    let theta = float("rope.freq_base").unwrap_or(10_000.0) as f32;
    let rope = match file.get(&key("rope.scaling.type")).and_then(Meta::as_str) {
        None | Some("none") => RopeConfig::Default { theta },
        Some("linear") => RopeConfig::Linear {
            theta,
            factor: float("rope.scaling.factor").unwrap_or(1.0) as f32,
        },
        Some(other) => {
            return Err(cfg_err(
                file,
                format!("rope scaling `{other}` is not supported (none, linear are)"),
            ));
        }
    };
    let embed = file
        .tensor("token_embd.weight")
        .ok_or_else(|| cfg_err(file, "tensor token_embd.weight is missing".into()))?;
    let vocab_size = uint("vocab_size")
        .or_else(|| embed.dims.get(1).copied())
        .unwrap_or(0);
    let tok_id = |k: &str| {
        file.get(&format!("tokenizer.ggml.{k}"))
            .and_then(Meta::as_u64)
            .map(|v| v as u32)
    };
    let rms_norm_eps = float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32;
    if rms_norm_eps.is_nan() || rms_norm_eps <= 0.0 {
        return Err(cfg_err(
            file,
            format!("`{}` must be > 0", key("attention.layer_norm_rms_epsilon")),
        ));
    }
    Ok(LlamaConfig {
        hidden_size,
        intermediate_size: need("feed_forward_length")?,
        num_layers: need("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        max_position_embeddings: need("context_length")?,
        rms_norm_eps,
        rope,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        bos_token_id: tok_id("bos_token_id"),
        eos_token_ids: tok_id("eos_token_id").into_iter().collect(),
        dtype: None,
        attention_bias: file.tensor("blk.0.attn_q.bias").is_some(),
        qk_norm: file.tensor("blk.0.attn_q_norm.weight").is_some(),
    })
}
