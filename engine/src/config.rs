//! The model's `config.json`, as Hugging Face writes it for Llama models
//! and the Qwen2/Qwen3 variants (`qwen2`: bias on the q/k/v projections;
//! `qwen3`: RMSNorm of q and k per head).
//!
//! Both spellings seen in real checkpoints are read: transformers 4
//! (`rope_theta`, `rope_scaling`) and transformers 5 (`rope_parameters`
//! holding `rope_theta` and the scaling).

use cake_kernels::{RopeScaling, RopeTable};
use serde::Deserialize;
use serde_json::Value;

use crate::EngineError;

/// How rotary frequencies are scaled for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeConfig {
    /// Plain RoPE.
    Default { theta: f32 },
    /// Llama-3 frequency-dependent scaling.
    Llama3 { theta: f32, scaling: RopeScaling },
    /// Position interpolation: every frequency divided by `factor`.
    Linear { theta: f32, factor: f32 },
}

impl RopeConfig {
    pub fn table(&self, head_dim: usize) -> RopeTable {
        match *self {
            RopeConfig::Default { theta } => RopeTable::new(head_dim, theta, None),
            RopeConfig::Llama3 { theta, scaling } => RopeTable::new(head_dim, theta, Some(scaling)),
            RopeConfig::Linear { theta, factor } => {
                let base = RopeTable::new(head_dim, theta, None);
                let inv = base.inv_freq().iter().map(|f| f / factor).collect();
                RopeTable::from_inv_freq(head_dim, inv)
            }
        }
    }
}

/// A Llama-architecture model's shape and hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope: RopeConfig,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` (or `dtype`) as written, e.g. `bfloat16`.
    pub dtype: Option<String>,
    /// Bias on the q, k and v projections (Qwen2; `attention_bias`).
    pub attention_bias: bool,
    /// RMSNorm of each head of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
}

/// `model_type`s read, with the architecture class names that go with
/// them.
const MODEL_TYPES: &[(&str, &str)] = &[
    ("llama", "Llama"),
    ("mistral", "Mistral"),
    ("qwen2", "Qwen2"),
    ("qwen3", "Qwen3"),
];

#[derive(Deserialize)]
struct Raw {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
}

fn need(v: Option<usize>, field: &str) -> Result<usize, EngineError> {
    match v {
        Some(0) => Err(EngineError::Config(format!("`{field}` must be positive"))),
        Some(n) => Ok(n),
        None => Err(EngineError::Config(format!("missing `{field}`"))),
    }
}

fn token_ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn num(obj: &Value, key: &str) -> Option<f64> {
    obj.get(key).and_then(Value::as_f64)
}

fn parse_rope(raw: &Raw) -> Result<RopeConfig, EngineError> {
    // transformers 5 puts theta and scaling together under rope_parameters.
    let params = raw.rope_parameters.as_ref().filter(|v| v.is_object());
    let scaling = params.or(raw.rope_scaling.as_ref().filter(|v| v.is_object()));
    let theta = params
        .and_then(|p| num(p, "rope_theta"))
        .or(raw.rope_theta)
        .unwrap_or(10_000.0) as f32;
    if theta.is_nan() || theta <= 1.0 {
        return Err(EngineError::Config(format!(
            "`rope_theta` must be > 1, got {theta}"
        )));
    }
    let Some(s) = scaling else {
        return Ok(RopeConfig::Default { theta });
    };
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = num(s, "factor").unwrap_or(1.0) as f32;
    match kind {
        "default" => Ok(RopeConfig::Default { theta }),
        "linear" => {
            if factor.is_nan() || factor <= 0.0 {
                return Err(EngineError::Config(format!(
                    "rope scaling `factor` must be > 0, got {factor}"
                )));
            }
            Ok(RopeConfig::Linear { theta, factor })
        }
        "llama3" => {
            let get = |k: &str| {
                num(s, k)
                    .ok_or_else(|| EngineError::Config(format!("llama3 rope scaling lacks `{k}`")))
            };
            let scaling = RopeScaling {
                factor,
                low_freq_factor: get("low_freq_factor")? as f32,
                high_freq_factor: get("high_freq_factor")? as f32,
                original_max_position_embeddings: get("original_max_position_embeddings")? as usize,
            };
            if scaling.high_freq_factor.is_nan()
                || scaling.low_freq_factor.is_nan()
                || scaling.high_freq_factor <= scaling.low_freq_factor
                || factor.is_nan()
                || factor <= 0.0
            {
                return Err(EngineError::Config(format!(
                    "llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor, got {scaling:?}"
                )));
            }
            Ok(RopeConfig::Llama3 { theta, scaling })
        }
        other => Err(EngineError::Config(format!(
            "rope scaling type `{other}` is not supported (default, linear, llama3 are)"
        ))),
    }
}

impl LlamaConfig {
    /// Parses the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<LlamaConfig, EngineError> {
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| EngineError::Config(format!("config.json is not valid: {e}")))?;
        if let Some(t) = &raw.model_type
            && !MODEL_TYPES.iter().any(|(m, _)| m == t)
        {
            return Err(EngineError::Config(format!(
                "model_type `{t}` is not supported (llama, mistral, qwen2, qwen3 are)"
            )));
        }
        if let Some(a) = &raw.architectures
            && !a.iter().any(|a| {
                MODEL_TYPES
                    .iter()
                    .any(|(_, c)| a.strip_prefix(c).is_some_and(|r| r.starts_with("For")))
            })
        {
            return Err(EngineError::Config(format!(
                "architectures {a:?} name no supported model (Llama, Mistral, Qwen2, Qwen3)"
            )));
        }
        let model_type = raw.model_type.as_deref().unwrap_or_else(|| {
            let a = raw.architectures.as_ref().and_then(|a| a.first());
            match a.map(String::as_str) {
                Some(a) if a.starts_with("Qwen2") => "qwen2",
                Some(a) if a.starts_with("Qwen3") => "qwen3",
                _ => "llama",
            }
        });
        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            return Err(EngineError::Config(format!(
                "hidden_act `{act}` is not supported (silu is)"
            )));
        }
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = need(
            raw.num_key_value_heads.or(Some(num_heads)),
            "num_key_value_heads",
        )?;
        let head_dim = need(raw.head_dim.or(Some(hidden_size / num_heads)), "head_dim")?;
        if num_heads % num_kv_heads != 0 {
            return Err(EngineError::Config(format!(
                "num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(EngineError::Config(format!(
                "head_dim ({head_dim}) must be even"
            )));
        }
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6) as f32;
        if rms_norm_eps.is_nan() || rms_norm_eps <= 0.0 {
            return Err(EngineError::Config("`rms_norm_eps` must be > 0".into()));
        }
        Ok(LlamaConfig {
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
            rms_norm_eps,
            rope: parse_rope(&raw)?,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&raw.eos_token_id),
            dtype: raw.torch_dtype.or(raw.dtype),
            // Qwen2's projections always have a bias; others say so.
            attention_bias: model_type == "qwen2" || raw.attention_bias.unwrap_or(false),
            qk_norm: model_type == "qwen3",
        })
    }

    /// KV values per token, all layers (K and V).
    pub fn kv_values_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim
    }

    /// FLOPs per token of the decoder layers' dense parts (Q, K, V, O
    /// projections and the MLP; not the LM head), a multiply-add being 2.
    pub fn dense_flops_per_token(&self) -> f64 {
        let h = self.hidden_size as f64;
        let q = (self.num_heads * self.head_dim) as f64;
        let kv = (self.num_kv_heads * self.head_dim) as f64;
        let i = self.intermediate_size as f64;
        let per_layer = h * q + 2.0 * h * kv + q * h + 3.0 * h * i;
        2.0 * per_layer * self.num_layers as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama",
        "hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":300,
        "max_position_embeddings":512,"rms_norm_eps":1e-5"#;

    fn cfg(extra: &str) -> Result<LlamaConfig, EngineError> {
        LlamaConfig::from_json(&format!("{BASE}{extra}}}"))
    }

    #[test]
    fn reads_transformers_4_and_5_rope_spellings() {
        let v4 = cfg(r#","rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}"#).unwrap();
        let v5 = cfg(r#","rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}"#).unwrap();
        assert_eq!(v4.rope, v5.rope);
        assert!(matches!(v4.rope, RopeConfig::Llama3 { theta, .. } if theta == 500000.0));
        let plain5 =
            cfg(r#","rope_parameters":{"rope_theta":1000.0,"rope_type":"default"}"#).unwrap();
        assert_eq!(plain5.rope, RopeConfig::Default { theta: 1000.0 });
        let lin = cfg(r#","rope_scaling":{"type":"linear","factor":8.0}"#).unwrap();
        assert_eq!(
            lin.rope,
            RopeConfig::Linear {
                theta: 10000.0,
                factor: 8.0
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = LlamaConfig::from_json(r#"{"model_type":"llama"}"#).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
        let e = cfg(r#","num_key_value_heads":3"#).unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let e = cfg(r#","rope_scaling":{"type":"yarn","factor":2.0}"#).unwrap_err();
        assert!(e.to_string().contains("yarn"), "{e}");
        let e = LlamaConfig::from_json("{not json").unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        let e = cfg(r#","model_type":"gpt2""#);
        assert!(e.is_err());
    }

    #[test]
    fn qwen_variants() {
        let base = BASE.replace("LlamaForCausalLM", "Qwen2ForCausalLM");
        let q2 = LlamaConfig::from_json(&format!("{}}}", base.replace("\"llama\"", "\"qwen2\"")))
            .unwrap();
        assert!(q2.attention_bias && !q2.qk_norm);
        let base = BASE.replace("LlamaForCausalLM", "Qwen3ForCausalLM");
        let q3 = LlamaConfig::from_json(&format!(
            "{},\"head_dim\":32}}",
            base.replace("\"llama\"", "\"qwen3\"")
        ))
        .unwrap();
        assert!(!q3.attention_bias && q3.qk_norm);
        assert_eq!(q3.head_dim, 32);
        let llama = cfg("").unwrap();
        assert!(!llama.attention_bias && !llama.qk_norm);
        let moe = BASE.replace("LlamaForCausalLM", "Qwen2MoeForCausalLM");
        assert!(LlamaConfig::from_json(&format!("{moe}}}")).is_err());
    }

    #[test]
    fn defaults_and_eos_lists() {
        let c =
            cfg(r#","eos_token_id":[1,2],"bos_token_id":0,"tie_word_embeddings":true"#).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert_eq!(c.bos_token_id, Some(0));
        assert!(c.tie_word_embeddings);
    }
}
