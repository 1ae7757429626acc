//! `cake-engine`: the model, KV chunks and their stores, the bidirectional
//! loader and the step scheduler.
//!
//! Depends on `cake-kernels` for math and on `cake-policy` for the cost
//! model alone. Nothing here knows about HTTP, tenants or admission.

pub mod bench;
mod cache;
mod config;
mod error;
mod generate;
pub mod gguf;
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
