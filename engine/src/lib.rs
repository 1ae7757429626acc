//! `cake-engine`: the model, KV chunks and their stores, the bidirectional
//! loader and the step scheduler.
//!
//! Depends on `cake-kernels` for math and on `cake-policy` for the cost
//! model alone. Nothing here knows about HTTP, tenants or admission.
//!
//! Features: `tools` adds what the `cake` binary runs beside serving, the
//! benchmark drivers (`bench`) and synthetic checkpoints (`init`);
//! `test-support` adds test helpers (`kv::LocalRedis`,
//! `kv::LocalRedisCluster`). Both are off by default, so the serving
//! library carries neither.

#[cfg(feature = "tools")]
pub mod bench;
mod cache;
mod config;
mod error;
mod generate;
pub mod gguf;
#[cfg(feature = "tools")]
pub mod init;
pub mod kv;
mod model;
mod rng;
mod sampling;
mod tokenizer;
mod weights;
pub mod worker;

pub use cache::{KvCache, KvChunk, KvLayout};
pub use cake_kernels::Device;
pub use config::{LlamaConfig, RopeConfig};
pub use error::EngineError;
pub use generate::{Decoding, FinishReason, GenerateOptions, StepOutput, TokenLogprob};
pub use model::{BatchItem, Logits, Model, PrefillOutput, Profile};
pub use rng::Rng;
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{DecodeStream, Tokenizer};
pub use weights::WeightsDtype;
