//! The small JSON files of a checkpoint: `config.json` and
//! `generation_config.json`, as transformers writes them for Llama.

use serde_json::{Value, json};

use super::Dtype;
use super::bpe::{BOS, EOS, EOT, special_id};
use super::preset::{Preset, Scaling};

/// `config.json` (transformers 4 spelling, which transformers 5 reads too).
pub(crate) fn config(p: &Preset, dtype: Dtype) -> Value {
    let rope_scaling = match p.rope_scaling {
        None => Value::Null,
        Some(Scaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
        Some(Scaling::Linear { factor }) => json!({ "type": "linear", "factor": factor }),
    };
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_layers,
        "num_attention_heads": p.num_heads,
        "num_key_value_heads": p.num_kv_heads,
        "head_dim": p.head_dim,
        "vocab_size": p.vocab_size,
        "max_position_embeddings": p.max_position_embeddings,
        "rms_norm_eps": p.rms_norm_eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": p.tie_word_embeddings,
        "torch_dtype": dtype.torch_name(),
        "bos_token_id": special_id(p.tokenizer_vocab, BOS),
        "eos_token_id": special_id(p.tokenizer_vocab, EOS),
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "cake_preset": p.name,
    })
}

/// `generation_config.json`: both ends of sequence stop generation.
pub(crate) fn generation_config(p: &Preset) -> Value {
    let v = p.tokenizer_vocab;
    json!({
        "bos_token_id": special_id(v, BOS),
        "eos_token_id": [special_id(v, EOS), special_id(v, EOT)],
        "do_sample": true,
        "temperature": 1.0,
        "top_p": 1.0,
    })
}
