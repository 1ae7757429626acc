//! A GGUF file's tensors under their Hugging Face names, dequantized to
//! f32 as llama.cpp does (and, with `--weights bf16`, rounded to bf16 by
//! the model loader).
//!
//! llama.cpp's converter permutes the rows of a Llama model's Q and K
//! projections (not a Qwen model's) (its RoPE rotates adjacent pairs; Hugging Face's rotates the
//! two halves of each head). They are permuted back here, as transformers
//! does when it loads a GGUF file, so one model code serves both formats.

use super::file::{GgufFile, TensorInfo};
use super::quants::{GgmlType, dequantize};
use crate::EngineError;
use crate::config::LlamaConfig;
use crate::weights::{TensorSource, WeightsDtype};

/// A GGUF file seen as a [`TensorSource`].
pub struct GgufWeights<'a> {
    file: &'a GgufFile,
    num_heads: usize,
    num_kv_heads: usize,
    permuted: bool,
}

/// The GGUF name of a Hugging Face tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    Some(match hf {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (layer, part) = rest.split_once('.')?;
            let (module, kind) = part.rsplit_once('.')?;
            let g = match module {
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "self_attn.q_norm" => "attn_q_norm",
                "self_attn.k_norm" => "attn_k_norm",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            format!("blk.{layer}.{g}.{kind}")
        }
    })
}

/// Bytes of memory the system can still give (`MemAvailable`), where the
/// system says.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl<'a> GgufWeights<'a> {
    /// The tensors of `file`, whose shape `cfg` is, to be held as
    /// `weights` says. Fails before reading anything when the dequantized
    /// weights would not fit in memory.
    pub fn new(
        file: &'a GgufFile,
        cfg: &LlamaConfig,
        weights: WeightsDtype,
    ) -> Result<GgufWeights<'a>, EngineError> {
        let (per, dtype) = match weights {
            WeightsDtype::Bf16 => (2, "bf16"),
            WeightsDtype::Auto | WeightsDtype::F32 => (4, "f32"),
        };
        let bytes: u64 = file.tensors.iter().map(|t| per * t.elements() as u64).sum();
        if let Some(avail) = available_memory()
            && bytes > avail
        {
            return Err(EngineError::Checkpoint {
                path: file.path().display().to_string(),
                reason: format!(
                    "its weights take {:.2} GB as {dtype}, more than the {:.2} GB of memory available",
                    bytes as f64 / 1e9,
                    avail as f64 / 1e9
                ),
            });
        }
        Ok(GgufWeights {
            file,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            permuted: super::config::permutes_qk(&super::config::architecture(file)?),
        })
    }

    fn info(&self, name: &str) -> Option<&'a TensorInfo> {
        gguf_name(name).and_then(|g| self.file.tensor(&g))
    }
}

/// Llama 3.1's RoPE: llama.cpp's converter writes its frequency scaling as
/// `rope_freqs.weight`, one factor per rotary pair that divides the pair's
/// frequency. The table for it, or `None` when the file has no factors.
pub fn rope_with_factors(
    file: &GgufFile,
    cfg: &LlamaConfig,
) -> Result<Option<cake_kernels::RopeTable>, EngineError> {
    let Some(t) = file.tensor("rope_freqs.weight") else {
        return Ok(None);
    };
    let err = |reason: String| EngineError::Tensor {
        name: format!("{} ({})", t.name, t.type_name()),
        reason,
    };
    let half = cfg.head_dim / 2;
    let ty = GgmlType::from_id(t.type_id).ok_or_else(|| err("type is not supported".into()))?;
    if t.elements() != half {
        return Err(err(format!(
            "{} factors, expected {half} (head_dim / 2)",
            t.elements()
        )));
    }
    let mut factors = Vec::new();
    dequantize(ty, file.data(t), &mut factors);
    if let Some(bad) = factors.iter().position(|f| !f.is_finite() || *f <= 0.0) {
        return Err(err(format!("factor {bad} is not a positive number")));
    }
    let base = cfg.rope.table(cfg.head_dim);
    let inv = base
        .inv_freq()
        .iter()
        .zip(&factors)
        .map(|(f, k)| f / k)
        .collect();
    Ok(Some(cake_kernels::RopeTable::from_inv_freq(
        cfg.head_dim,
        inv,
    )))
}

/// Undoes llama.cpp's `permute(w, n_head)` of a Q or K projection: within
/// each head, GGUF row `2i + j` is Hugging Face row `j·d/2 + i`.
fn unpermute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let d = rows / heads;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let src = (h * d + 2 * i + j) * cols;
                let dst = (h * d + j * (d / 2) + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

impl TensorSource for GgufWeights<'_> {
    fn contains(&self, name: &str) -> bool {
        self.info(name).is_some()
    }

    fn metadata(&self) -> Vec<(String, String, Vec<usize>)> {
        let mut out: Vec<_> = self
            .file
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.type_name(), t.torch_shape()))
            .collect();
        out.sort();
        out
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
        let gname = gguf_name(name).unwrap_or_else(|| name.to_string());
        let t = self
            .file
            .tensor(&gname)
            .ok_or_else(|| EngineError::Tensor {
                name: gname.clone(),
                reason: format!("missing from the GGUF file (wanted as {name})"),
            })?;
        let err = |reason: String| EngineError::Tensor {
            name: format!("{} ({})", t.name, t.type_name()),
            reason,
        };
        let ty =
            GgmlType::from_id(t.type_id).ok_or_else(|| {
                err("type is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K are)"
                .into())
            })?;
        if t.torch_shape() != shape {
            return Err(err(format!(
                "shape {:?}, expected {shape:?}",
                t.torch_shape()
            )));
        }
        let mut out = Vec::new();
        dequantize(ty, self.file.data(t), &mut out);
        if let Some(bad) = out.iter().position(|v| !v.is_finite()) {
            return Err(err(format!("non-finite value at element {bad}")));
        }
        let heads = if !self.permuted {
            None
        } else if gname.ends_with("attn_q.weight") {
            Some(self.num_heads)
        } else if gname.ends_with("attn_k.weight") {
            Some(self.num_kv_heads)
        } else {
            None
        };
        match heads {
            Some(h) if shape.len() == 2 => Ok(unpermute(&out, h, shape[1])),
            _ => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp_names() {
        assert_eq!(
            gguf_name("model.layers.7.self_attn.q_proj.weight").as_deref(),
            Some("blk.7.attn_q.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.down_proj.weight").as_deref(),
            Some("blk.0.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.layers.3.self_attn.k_norm.weight").as_deref(),
            Some("blk.3.attn_k_norm.weight")
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(gguf_name("model.layers.x"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // permute: rows of a head [a0 a1 a2 a3 | b0 ...] with d = 4 become
        // [a0 a2 a1 a3]: row 2i + j of the output is row j·d/2 + i.
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect(); // 2 heads, d 4, 1 col
        let permuted = [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
        assert_eq!(unpermute(&permuted, 2, 1), hf);
    }
}
