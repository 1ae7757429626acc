//! `cake model init`: synthetic checkpoints in the Hugging Face layout.
//!
//! [`write_checkpoint`] writes a folder that `transformers` loads as
//! `LlamaForCausalLM` and the engine loads as a [`crate::Model`]:
//! `config.json`, `generation_config.json`, `model.safetensors` (or shards
//! with `model.safetensors.index.json` past [`InitOptions::shard_bytes`]),
//! `tokenizer.json` and `tokenizer_config.json`. Weights are seeded random
//! (see `weights.rs` for their scale); the same preset, seed and dtype give
//! the same bytes on every machine.
//!
//! The tokenizer is byte-level BPE learned on a fixed corpus (`bpe.rs`):
//! it depends only on its size, which is the model's vocabulary for
//! `tiny` (512), `small` and `longalpaca-7b` (32000), and 32000 for the
//! Llama-3 shapes, whose 128256 embedding rows are more than any text
//! maps to (the engine samples only ids the tokenizer has).
//!
//! It checks the space the checkpoint needs before writing anything,
//! writes tensors one block at a time (memory stays at a few MiB per
//! thread), into a temporary folder beside the output that is renamed into
//! place at the end: a failed run leaves no half checkpoint.

mod bpe;
mod corpus;
mod files;
mod preset;
mod shards;
mod space;
mod weights;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

pub use bpe::{CHAT_TEMPLATE, SPECIAL_TOKENS};
pub use preset::{PRESETS, Preset, Scaling, preset};
pub use space::{Available, available};

/// Element type of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    /// `f32`, `f16`, `bf16` (or the torch names `float32`, ...).
    pub fn parse(s: &str) -> Option<Dtype> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Some(Dtype::F32),
            "f16" | "float16" | "half" => Some(Dtype::F16),
            "bf16" | "bfloat16" => Some(Dtype::Bf16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// The dtype's name in safetensors headers.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
        }
    }

    /// The dtype's name in `config.json`'s `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }

    /// Appends `v` in this dtype, little-endian (rounded to nearest even).
    fn push(self, v: f32, out: &mut Vec<u8>) {
        match self {
            Dtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            Dtype::Bf16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        })
    }
}

/// Called with (bytes of tensor data written so far, total).
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How [`write_checkpoint_with`] writes.
#[derive(Clone)]
pub struct InitOptions {
    /// Largest tensor data per safetensors file; a bigger checkpoint is
    /// sharded as Hugging Face does. Default 4 GiB.
    pub shard_bytes: u64,
    /// Replace an existing, non-empty output folder.
    pub force: bool,
    /// Room to check against; `None` measures the machine.
    pub available: Option<Available>,
    /// Threads generating weights; 0 uses every core.
    pub threads: usize,
    /// Told of progress as tensor data is written.
    pub progress: Option<ProgressFn>,
}

impl Default for InitOptions {
    fn default() -> InitOptions {
        InitOptions {
            shard_bytes: 4 << 30,
            force: false,
            available: None,
            threads: 0,
            progress: None,
        }
    }
}

impl fmt::Debug for InitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitOptions")
            .field("shard_bytes", &self.shard_bytes)
            .field("force", &self.force)
            .field("available", &self.available)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Why a checkpoint could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "not enough {resource} at {path}: the checkpoint needs {needed_gib:.2} GiB, {available_gib:.2} GiB available"
    )]
    NotEnoughSpace {
        resource: &'static str,
        path: PathBuf,
        needed_gib: f64,
        available_gib: f64,
    },
    #[error("{0} exists and is not empty (force replaces it)")]
    OutputExists(PathBuf),
    #[error("preset {name}: {reason}")]
    InvalidPreset { name: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("internal: {0}")]
    Internal(String),
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> InitError {
    InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub dir: PathBuf,
    /// File names in `dir`.
    pub files: Vec<String>,
    /// Bytes of all files.
    pub bytes: u64,
    pub params: u64,
}

/// Writes a checkpoint of `preset` with weights from `seed` into `out`,
/// with default options (an existing non-empty `out` is an error).
pub fn write_checkpoint(
    preset: &Preset,
    seed: u64,
    dtype: Dtype,
    out: &Path,
) -> Result<Written, InitError> {
    write_checkpoint_with(preset, seed, dtype, out, &InitOptions::default())
}

/// Bytes the checkpoint's files will take, tokenizer aside (which is a
/// few MiB at most).
pub fn checkpoint_bytes(preset: &Preset, dtype: Dtype, shard_bytes: u64) -> Result<u64, InitError> {
    let plan = shards::plan(&weights::tensors(preset), dtype, shard_bytes);
    plan.iter().map(|s| shards::file_bytes(s, dtype)).sum()
}

/// [`write_checkpoint`] with options.
pub fn write_checkpoint_with(
    preset: &Preset,
    seed: u64,
    dtype: Dtype,
    out: &Path,
    opts: &InitOptions,
) -> Result<Written, InitError> {
    preset
        .validate()
        .map_err(|reason| InitError::InvalidPreset {
            name: preset.name.to_string(),
            reason,
        })?;
    remove_stale_siblings(out);
    check_output(out, opts.force)?;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };

    // Everything small first, in memory, so the space needed is exact.
    let mut small: Vec<(&str, Vec<u8>)> = vec![
        ("config.json", pretty(&files::config(preset, dtype))?),
        (
            "generation_config.json",
            pretty(&files::generation_config(preset))?,
        ),
        (
            "tokenizer.json",
            pretty(&bpe::tokenizer_json(preset.tokenizer_vocab)?)?,
        ),
        (
            "tokenizer_config.json",
            pretty(&bpe::tokenizer_config(
                preset.tokenizer_vocab,
                preset.max_position_embeddings,
            ))?,
        ),
    ];
    let plan = shards::plan(&weights::tensors(preset), dtype, opts.shard_bytes.max(1));
    if plan.len() > 1 {
        small.push((
            "model.safetensors.index.json",
            pretty(&shards::index(&plan, dtype))?,
        ));
    }
    let mut total: u64 = small.iter().map(|(_, b)| b.len() as u64).sum();
    for s in &plan {
        total += shards::file_bytes(s, dtype)?;
    }
    let data_total: u64 = plan
        .iter()
        .flat_map(|s| &s.tensors)
        .map(|t| t.numel() * dtype.size() as u64)
        .sum();
    // Blocks in flight (f32 while generated, encoded copy) and write buffers.
    let memory = (threads as u64) * (weights::BLOCK as u64) * 8 + (64 << 20);
    let avail = opts.available.unwrap_or_else(|| space::available(out));
    space::check(avail, out, total, memory)?;

    let tmp = TempDir::create(out)?;
    for (name, bytes) in &small {
        let path = tmp.path.join(name);
        std::fs::write(&path, bytes).map_err(|e| io_err(&path, e))?;
    }
    let mut done = 0u64;
    for s in &plan {
        let path = tmp.path.join(&s.file);
        shards::write(s, dtype, seed, threads, &path, &mut |n| {
            done += n;
            if let Some(p) = &opts.progress {
                p(done, data_total);
            }
        })?;
    }
    tmp.persist(out, opts.force)?;

    let mut names: Vec<String> = small.iter().map(|(n, _)| n.to_string()).collect();
    names.extend(plan.iter().map(|s| s.file.clone()));
    names.sort();
    Ok(Written {
        dir: out.to_path_buf(),
        files: names,
        bytes: total,
        params: preset.param_count(),
    })
}

/// The text of `tokenizer.json` and `tokenizer_config.json` of the
/// synthetic tokenizer with `vocab` tokens (see `bpe.rs` for how it is
/// built) for a model of `context` positions.
pub fn tokenizer_files(vocab: usize, context: usize) -> Result<(String, String), InitError> {
    let text = |v: &Value| {
        pretty(v).and_then(|b| String::from_utf8(b).map_err(|e| InitError::Internal(e.to_string())))
    };
    Ok((
        text(&bpe::tokenizer_json(vocab)?)?,
        text(&bpe::tokenizer_config(vocab, context))?,
    ))
}

fn pretty(v: &Value) -> Result<Vec<u8>, InitError> {
    let mut out = serde_json::to_vec_pretty(v).map_err(|e| InitError::Internal(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// `out` must be missing, an empty folder, or (with `force`) a folder.
fn check_output(out: &Path, force: bool) -> Result<(), InitError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                return Err(InitError::OutputExists(out.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(out, e)),
    }
}

/// A folder beside the output, removed on drop unless persisted.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

fn sibling(out: &Path, tag: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let parent = out.parent().unwrap_or(Path::new("."));
    parent.join(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Removes temporary folders of earlier runs for the same output that were
/// killed (their process is gone), so an interrupted init leaves no
/// garbage behind for long. Only where `/proc` tells which processes live.
fn remove_stale_siblings(out: &Path) {
    let (Some(name), Some(parent)) = (out.file_name(), out.parent()) else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let name = name.to_string_lossy();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let stale = [".cake-init-", ".cake-old-"].iter().find_map(|tag| {
            let pid = file
                .strip_prefix(&format!(".{name}{tag}"))?
                .parse::<u32>()
                .ok()?;
            let gone = pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists();
            gone.then_some(*tag)
        });
        match stale {
            // Killed between moving the old checkpoint aside and putting
            // the new one in place: the old one goes back.
            Some(".cake-old-") if !out.exists() => {
                let _ = std::fs::rename(entry.path(), out);
            }
            Some(_) => {
                let _ = std::fs::remove_dir_all(entry.path());
            }
            None => {}
        }
    }
}

impl TempDir {
    fn create(out: &Path) -> Result<TempDir, InitError> {
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        let path = sibling(out, "cake-init");
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| io_err(&path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| io_err(&path, e))?;
        Ok(TempDir { path, keep: false })
    }

    /// Moves the folder to `out`, replacing what is there.
    fn persist(mut self, out: &Path, force: bool) -> Result<(), InitError> {
        check_output(out, force)?;
        let old = sibling(out, "cake-old");
        let had_old = out.exists();
        if had_old {
            std::fs::rename(out, &old).map_err(|e| io_err(out, e))?;
        }
        if let Err(e) = std::fs::rename(&self.path, out) {
            if had_old {
                let _ = std::fs::rename(&old, out);
            }
            return Err(io_err(out, e));
        }
        self.keep = true;
        if had_old {
            std::fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
        }
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
