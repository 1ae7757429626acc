//! `[engine]` in `cake.toml`: how a worker runs its model.

use cake_policy::Invalid;
use serde::{Deserialize, Serialize};

use super::types::Strategy;
use crate::WeightsDtype;
use crate::kv::{Codec, KvConfig};

/// Which work a step's token budget serves first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BudgetOrder {
    /// The paper's adaptive order: decode tokens, then fresh prefills, then
    /// Cake's compute side with what is left.
    #[default]
    Adaptive,
    /// First come, first served: requests in arrival order, whatever they
    /// need.
    Fcfs,
}

/// How a worker runs its model.
///
/// `chunk_tokens` and `codec` are the stored chunk format, set once in
/// `[kv]` (the store's files and keys depend on them): they are not keys
/// of `[engine]`, and [`EngineConfig::with_chunks_of`] copies them from a
/// [`KvConfig`]. A file that still has them in `[engine]` parses, and
/// [`EngineConfig::validate`] refuses it naming the key to use instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Worker name in usage, metrics and logs.
    pub name: String,
    /// Compute device: `cpu` (or `cuda:N` in builds with the `cuda` feature).
    pub device: String,
    /// How the matmul weights are held in memory: `auto` (a checkpoint's
    /// bf16/f16 tensors stay 16-bit, exactly; f32 and GGUF blocks are
    /// f32), `f32`, or `bf16` (rounds f32/f16/GGUF values; half the bytes
    /// a CPU decode step reads).
    pub weights: WeightsDtype,
    /// Tokens per KV chunk (a power of two): the unit stored, loaded and
    /// computed. Not read from `[engine]`: `kv.chunk_tokens`.
    #[serde(skip)]
    pub chunk_tokens: usize,
    /// How cached prefixes get their KV: `compute`, `load`, `cake`, `auto`.
    pub strategy: Strategy,
    /// Tokens one scheduler step may compute, all requests together.
    pub token_budget: usize,
    /// Which work the budget serves first: `adaptive` or `fcfs`.
    pub order: BudgetOrder,
    /// Chunk loads in flight per request.
    pub io_queue_depth: usize,
    /// Codec of stored chunks: `f32`, `f16`, `bf16` (lossless for a model
    /// in that dtype) or `int8` (lossy). Not read from `[engine]`:
    /// `kv.codec`.
    #[serde(skip)]
    pub codec: Codec,
    /// Requests a worker runs at once; more wait in its queue.
    pub max_running: usize,
    /// Requests waiting beyond `max_running` before new ones are refused.
    pub max_waiting: usize,
    /// Write newly computed full chunks back to the store.
    pub write_back: bool,
    /// A step that prefills a higher-priority request leaves lower-priority
    /// prefills for the next step (decode tokens still run), so the step a
    /// priority request waits on is as short as its own work. No effect
    /// when all requests share one priority.
    pub priority_alone: bool,
    /// `chunk_tokens` written in `[engine]` by a file from before it moved
    /// to `[kv]`: kept only for [`EngineConfig::validate`] to refuse, naming
    /// `kv.chunk_tokens`. `None` in every valid config.
    #[serde(rename = "chunk_tokens", skip_serializing)]
    pub old_chunk_tokens: Option<serde_json::Value>,
    /// `codec` written in `[engine]` by a file from before it moved to
    /// `[kv]`: refused like `old_chunk_tokens`, naming `kv.codec`.
    #[serde(rename = "codec", skip_serializing)]
    pub old_codec: Option<serde_json::Value>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            name: "worker-0".into(),
            device: "cpu".into(),
            weights: WeightsDtype::Auto,
            chunk_tokens: 256,
            strategy: Strategy::Cake,
            token_budget: 512,
            order: BudgetOrder::Adaptive,
            io_queue_depth: 2,
            codec: Codec::F32,
            max_running: 16,
            max_waiting: 256,
            write_back: true,
            priority_alone: true,
            old_chunk_tokens: None,
            old_codec: None,
        }
    }
}

impl EngineConfig {
    /// This config with the chunk format of the store `kv` builds
    /// (`kv.chunk_tokens`, `kv.codec`): how an engine over that store is
    /// configured.
    pub fn with_chunks_of(self, kv: &KvConfig) -> EngineConfig {
        EngineConfig {
            chunk_tokens: kv.chunk_tokens as usize,
            codec: kv.codec,
            ..self
        }
    }

    /// Checks every field; the error names the field, the value and why.
    pub fn validate(&self) -> Result<(), Invalid> {
        let moved = [
            ("chunk_tokens", &self.old_chunk_tokens),
            ("codec", &self.old_codec),
        ];
        for (key, old) in moved {
            if let Some(v) = old {
                return Err(Invalid::new(
                    format!("engine.{key}"),
                    v,
                    format!(
                        "moved to `kv.{key}` (the stored chunk format is set once, in [kv]): \
                         set it there and delete it here"
                    ),
                ));
            }
        }
        if self.chunk_tokens == 0 || !self.chunk_tokens.is_power_of_two() {
            return Err(Invalid::new(
                "kv.chunk_tokens",
                self.chunk_tokens,
                "must be a power of two",
            ));
        }
        if self.token_budget < self.chunk_tokens {
            return Err(Invalid::new(
                "engine.token_budget",
                self.token_budget,
                format!(
                    "must hold at least one chunk (kv.chunk_tokens = {})",
                    self.chunk_tokens
                ),
            ));
        }
        if self.io_queue_depth == 0 || self.io_queue_depth > 64 {
            return Err(Invalid::new(
                "engine.io_queue_depth",
                self.io_queue_depth,
                "must be 1..=64",
            ));
        }
        if self.max_running == 0 {
            return Err(Invalid::new("engine.max_running", 0, "must be at least 1"));
        }
        if self.name.is_empty() {
            return Err(Invalid::new("engine.name", "\"\"", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_field_value_and_reason() {
        let c = EngineConfig {
            io_queue_depth: 65,
            ..EngineConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(Invalid::new("engine.io_queue_depth", 65, "must be 1..=64"))
        );
        let c = EngineConfig {
            token_budget: 128,
            ..EngineConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("engine.token_budget", "128")
        );
        assert_eq!(
            e.reason,
            "must hold at least one chunk (kv.chunk_tokens = 256)"
        );
        let c = EngineConfig {
            name: String::new(),
            ..EngineConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "engine.name = \"\": must not be empty"
        );
    }

    #[test]
    fn the_chunk_format_comes_from_kv_and_old_keys_name_the_new_one() {
        let kv = KvConfig {
            chunk_tokens: 64,
            codec: Codec::Bf16,
            ..KvConfig::default()
        };
        let c = EngineConfig::default().with_chunks_of(&kv);
        assert_eq!((c.chunk_tokens, c.codec), (64, Codec::Bf16));
        c.validate().unwrap();

        let c: EngineConfig = toml::from_str("").unwrap();
        assert_eq!(c, EngineConfig::default());

        let c: EngineConfig = toml::from_str("chunk_tokens = 64\n").unwrap();
        assert_eq!(c.chunk_tokens, 256, "not read from [engine]");
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "engine.chunk_tokens = 64: moved to `kv.chunk_tokens` (the stored chunk format \
             is set once, in [kv]): set it there and delete it here"
        );
        let c: EngineConfig = toml::from_str("codec = \"bf16\"\n").unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("engine.codec", "\"bf16\"")
        );
        assert!(e.reason.starts_with("moved to `kv.codec`"), "{e}");
    }
}
