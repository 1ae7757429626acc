//! Named model shapes for `cake model init`.

use super::Dtype;

/// Rotary-embedding scaling written to `config.json` as `rope_scaling`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scaling {
    /// Llama-3's frequency-dependent scaling (`"rope_type": "llama3"`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Position interpolation (`"type": "linear"`), as LongAlpaca uses.
    Linear { factor: f64 },
}

/// A model shape. Fields are public so tests and tools can make variants
/// (`Preset { num_layers: 1, ..init::preset("tiny")? }`).
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Rows of the embedding and of `lm_head`.
    pub vocab_size: usize,
    /// Tokens of the synthetic tokenizer (≤ `vocab_size`). For the
    /// 128256-row Llama-3 shapes it is 32000: ids beyond it are rows no
    /// text maps to (the engine never samples them).
    pub tokenizer_vocab: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Scaling>,
    pub tie_word_embeddings: bool,
    /// What `cake model init` writes when `--dtype` is not given.
    pub default_dtype: Dtype,
}

/// Names accepted by [`preset`].
pub const PRESETS: &[&str] = &[
    "tiny",
    "small",
    "llama-3-8b",
    "llama-3-70b",
    "longalpaca-7b",
];

const LLAMA3_ROPE: Scaling = Scaling::Llama3 {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192,
};

/// The preset called `name`, if there is one (see [`PRESETS`]).
pub fn preset(name: &str) -> Option<Preset> {
    let p = match name {
        // For tests: every code path (GQA, tied embeddings, all three
        // branches of Llama-3 rope scaling) at a size that runs in
        // milliseconds.
        "tiny" => Preset {
            name: "tiny",
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            vocab_size: 512,
            tokenizer_vocab: 512,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: Some(Scaling::Llama3 {
                factor: 4.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 1024,
            }),
            tie_word_embeddings: true,
            default_dtype: Dtype::F32,
        },
        // For CPU demos and benchmarks: long context, real vocabulary size.
        "small" => Preset {
            name: "small",
            hidden_size: 256,
            intermediate_size: 768,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
            vocab_size: 32_000,
            tokenizer_vocab: 32_000,
            max_position_embeddings: 32_768,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            default_dtype: Dtype::F32,
        },
        "llama-3-8b" => Preset {
            name: "llama-3-8b",
            ..llama3(4096, 14_336, 32, 32)
        },
        "llama-3-70b" => Preset {
            name: "llama-3-70b",
            ..llama3(8192, 28_672, 80, 64)
        },
        // Llama-2-7B's shape with LongAlpaca's 8x linear scaling.
        "longalpaca-7b" => Preset {
            name: "longalpaca-7b",
            hidden_size: 4096,
            intermediate_size: 11_008,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 32,
            head_dim: 128,
            vocab_size: 32_000,
            tokenizer_vocab: 32_000,
            max_position_embeddings: 32_768,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: Some(Scaling::Linear { factor: 8.0 }),
            tie_word_embeddings: false,
            default_dtype: Dtype::Bf16,
        },
        _ => return None,
    };
    Some(p)
}

fn llama3(hidden: usize, intermediate: usize, layers: usize, heads: usize) -> Preset {
    Preset {
        name: "",
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: 8,
        head_dim: hidden / heads,
        vocab_size: 128_256,
        tokenizer_vocab: 32_000,
        max_position_embeddings: 131_072,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: Some(LLAMA3_ROPE),
        tie_word_embeddings: false,
        default_dtype: Dtype::Bf16,
    }
}

impl Preset {
    /// Checks that the shape is one a Llama model can have.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{field}` must be positive"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "`num_heads` ({}) must be a multiple of `num_kv_heads` ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "`head_dim` ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        let min_vocab = 256 + super::bpe::SPECIAL_TOKENS.len();
        if self.tokenizer_vocab < min_vocab || self.tokenizer_vocab > self.vocab_size {
            return Err(format!(
                "`tokenizer_vocab` ({}) must be between {min_vocab} and `vocab_size` ({})",
                self.tokenizer_vocab, self.vocab_size
            ));
        }
        Ok(())
    }

    /// Number of weights.
    pub fn param_count(&self) -> u64 {
        super::weights::tensors(self)
            .iter()
            .map(|t| t.numel())
            .sum()
    }

    /// Bytes of tensor data in `dtype` (headers and small files aside).
    pub fn weight_bytes(&self, dtype: Dtype) -> u64 {
        self.param_count() * dtype.size() as u64
    }
}
