//! `[engine]` in `cake.toml`: how a worker runs its model.

use serde::{Deserialize, Serialize};

use super::types::Strategy;
use crate::WeightsDtype;
use crate::kv::Codec;

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
    /// computed.
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
    /// in that dtype) or `int8` (lossy).
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
        }
    }
}

impl EngineConfig {
    /// Checks every field; the error names the field, the value and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunk_tokens == 0 || !self.chunk_tokens.is_power_of_two() {
            return Err(format!(
                "engine.chunk_tokens = {}: must be a power of two",
                self.chunk_tokens
            ));
        }
        if self.token_budget < self.chunk_tokens {
            return Err(format!(
                "engine.token_budget = {}: must hold at least one chunk ({} tokens)",
                self.token_budget, self.chunk_tokens
            ));
        }
        if self.io_queue_depth == 0 || self.io_queue_depth > 64 {
            return Err(format!(
                "engine.io_queue_depth = {}: must be 1..=64",
                self.io_queue_depth
            ));
        }
        if self.max_running == 0 {
            return Err("engine.max_running = 0: must be at least 1".into());
        }
        if self.name.is_empty() {
            return Err("engine.name: must not be empty".into());
        }
        Ok(())
    }
}
