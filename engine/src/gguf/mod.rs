//! GGUF checkpoints (llama.cpp's format): the container, its metadata as a
//! model config and a tokenizer, and its tensors dequantized as llama.cpp
//! does.

mod config;
mod file;
mod quants;
mod vocab;
mod weights;

pub use config::{architecture, config};
pub use file::{GgufFile, Meta, TensorInfo, is_gguf};
pub use quants::{GgmlType, dequantize};
pub(crate) use vocab::tokenizer_parts;
pub(crate) use weights::{GgufWeights, rope_with_factors};
