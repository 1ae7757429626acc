//! Reading a checkpoint's tensors from `model.safetensors`, or from shards
//! listed in `model.safetensors.index.json`, as f32 or in their 16-bit
//! type; and the one trait the model loads tensors through, whatever file
//! holds them.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// How the matmul weights (the layers' projections and the LM head, a
/// tied embedding included) are held in memory: `engine.weights` in the
/// config, `--weights` on the command line. Norms and biases stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsDtype {
    /// A checkpoint's bf16 or f16 tensors stay in that type (exact: the
    /// kernels widen them to f32 as they read them); f32 tensors and
    /// GGUF blocks are f32.
    #[default]
    Auto,
    /// Every matmul weight widened to f32 (twice the bytes of a 16-bit
    /// checkpoint a decode step reads).
    F32,
    /// Every matmul weight in bf16: exact for a bf16 checkpoint, rounded
    /// to nearest even from f32, f16 or dequantized GGUF blocks (so the
    /// model's outputs change slightly; its KV cache keys change too).
    Bf16,
}

impl WeightsDtype {
    /// The spelling the config and the command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightsDtype::Auto => "auto",
            WeightsDtype::F32 => "f32",
            WeightsDtype::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for WeightsDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(WeightsDtype::Auto),
            "f32" => Ok(WeightsDtype::F32),
            "bf16" => Ok(WeightsDtype::Bf16),
            _ => Err(format!("`{s}` (weights are `auto`, `f32` or `bf16`)")),
        }
    }
}

/// A matmul weight as loaded: f32 values, or 16-bit bits (row-major).
pub(crate) enum Loaded {
    F32(Vec<f32>),
    Half { bits: Vec<u16>, bf16: bool },
}

impl Loaded {
    /// `v` held as `want` asks of an f32 source.
    fn from_f32(v: Vec<f32>, want: WeightsDtype) -> Loaded {
        match want {
            WeightsDtype::Bf16 => Loaded::Half {
                bits: v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect(),
                bf16: true,
            },
            WeightsDtype::Auto | WeightsDtype::F32 => Loaded::F32(v),
        }
    }
}

/// Where a model's tensors come from, by their Hugging Face names and
/// shapes (a GGUF file maps its own names onto those).
pub(crate) trait TensorSource {
    fn contains(&self, name: &str) -> bool;
    /// Metadata of every tensor (name, dtype, shape), sorted by name: the
    /// input of the model fingerprint.
    fn metadata(&self) -> Vec<(String, String, Vec<usize>)>;
    /// Tensor `name` as f32, checked against `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError>;
    /// Matmul weight `name`, held as `want` says (sources that store
    /// 16-bit tensors keep them under [`WeightsDtype::Auto`]).
    fn load_weight(
        &self,
        name: &str,
        shape: &[usize],
        want: WeightsDtype,
    ) -> Result<Loaded, EngineError> {
        Ok(Loaded::from_f32(self.load(name, shape)?, want))
    }
}

/// The raw bytes of every shard, and which shard holds which tensor.
pub(crate) struct Checkpoint {
    shards: Vec<(PathBuf, Vec<u8>)>,
    index: HashMap<String, usize>,
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl Checkpoint {
    /// Opens `dir`: the single-file layout or the sharded one.
    pub(crate) fn open(dir: &Path) -> Result<Checkpoint, EngineError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| ckpt_err(&index_path, e.to_string()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ckpt_err(&index_path, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ckpt_err(&index_path, "no `weight_map` object"))?;
            let names: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else {
            return Err(ckpt_err(
                dir,
                "neither model.safetensors nor model.safetensors.index.json is there",
            ));
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let bytes = std::fs::read(&path).map_err(|e| ckpt_err(&path, e.to_string()))?;
            let st = SafeTensors::deserialize(&bytes)
                .map_err(|e| ckpt_err(&path, format!("not a valid safetensors file: {e}")))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            shards.push((path, bytes));
        }
        Ok(Checkpoint { shards, index })
    }
}

impl Checkpoint {
    /// Tensor `name`'s dtype and bytes, its shape checked.
    fn view(&self, name: &str, shape: &[usize]) -> Result<(Dtype, &[u8]), EngineError> {
        let tensor_err = |reason: String| EngineError::Tensor {
            name: name.to_string(),
            reason,
        };
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| tensor_err("missing from the checkpoint".into()))?;
        let (path, bytes) = &self.shards[i];
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| ckpt_err(path, format!("not a valid safetensors file: {e}")))?;
        let view = st
            .tensor(name)
            .map_err(|e| tensor_err(format!("unreadable: {e}")))?;
        if view.shape() != shape {
            return Err(tensor_err(format!(
                "shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        Ok((view.dtype(), view.data()))
    }
}

impl TensorSource for Checkpoint {
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn metadata(&self) -> Vec<(String, String, Vec<usize>)> {
        let mut out = Vec::new();
        for (_, bytes) in &self.shards {
            if let Ok(st) = SafeTensors::deserialize(bytes) {
                for (name, view) in st.tensors() {
                    out.push((name, format!("{:?}", view.dtype()), view.shape().to_vec()));
                }
            }
        }
        out.sort();
        out
    }

    fn load_weight(
        &self,
        name: &str,
        shape: &[usize],
        want: WeightsDtype,
    ) -> Result<Loaded, EngineError> {
        let (dtype, data) = self.view(name, shape)?;
        let bf16 = match (dtype, want) {
            (Dtype::BF16, WeightsDtype::Auto | WeightsDtype::Bf16) => true,
            (Dtype::F16, WeightsDtype::Auto) => false,
            _ => return Ok(Loaded::from_f32(self.load(name, shape)?, want)),
        };
        let bits: Vec<u16> = data
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        // All exponent bits set: an infinity or a NaN.
        let exp = if bf16 { 0x7f80 } else { 0x7c00 };
        if let Some(bad) = bits.iter().position(|b| b & exp == exp) {
            return Err(EngineError::Tensor {
                name: name.to_string(),
                reason: format!("non-finite value at element {bad}"),
            });
        }
        Ok(Loaded::Half { bits, bf16 })
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
        let tensor_err = |reason: String| EngineError::Tensor {
            name: name.to_string(),
            reason,
        };
        let (dtype, data) = self.view(name, shape)?;
        let out: Vec<f32> = match dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(tensor_err(format!(
                    "dtype {other:?} is not supported (F32, F16, BF16 are)"
                )));
            }
        };
        if let Some(bad) = out.iter().position(|v| !v.is_finite()) {
            return Err(tensor_err(format!("non-finite value at element {bad}")));
        }
        Ok(out)
    }
}
