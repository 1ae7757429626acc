//! Finding (and creating once) the synthetic checkpoints that benchmarks
//! and the default server run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use cake_engine::init::{Dtype, InitOptions, preset, write_checkpoint_with};
use cake_engine::{Device, Model, Tokenizer, WeightsDtype};

/// The folder of preset `name` with weights from `seed` under
/// `data_dir/models/`, written there first if it is not yet.
pub fn ensure_preset(name: &str, seed: u64, data_dir: &Path) -> anyhow::Result<PathBuf> {
    ensure_preset_layers(name, seed, None, data_dir)
}

/// Like [`ensure_preset`], with the preset's layer count replaced by
/// `layers` when given (the same layer shapes, fewer of them: benchmarks
/// of a real model's shapes that fit a short run). Tiny and small are
/// written in f32, the real shapes in the preset's dtype (bf16).
pub fn ensure_preset_layers(
    name: &str,
    seed: u64,
    layers: Option<usize>,
    data_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let mut p = preset(name).with_context(|| {
        format!(
            "unknown preset `{name}` (known: {})",
            cake_engine::init::PRESETS.join(", ")
        )
    })?;
    let folder = match layers {
        Some(l) => {
            anyhow::ensure!(l > 0, "--layers must be at least 1");
            p.num_layers = l;
            format!("{name}-{l}layers-seed{seed}")
        }
        None => format!("{name}-seed{seed}"),
    };
    let dir = data_dir.join("models").join(folder);
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let dtype = if matches!(name, "tiny" | "small") {
        Dtype::F32
    } else {
        p.default_dtype
    };
    eprintln!(
        "creating the {name} model ({} layers, {dtype}) in {}",
        p.num_layers,
        dir.display()
    );
    write_checkpoint_with(&p, seed, dtype, &dir, &InitOptions::default())
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The model options every benchmark command shares.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchModel {
    /// Synthetic model preset (created once under --data-dir).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Run this checkpoint (a folder, or a GGUF file) instead of a preset.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Use only this many of the preset's layers (same shapes).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Device to run on: cpu, cuda or cuda:N (needs a build with
    /// `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// How the matmul weights are held: auto (a checkpoint's 16-bit
    /// tensors stay 16-bit; f32 and GGUF blocks f32), f32 or bf16.
    #[arg(long, default_value = "auto")]
    pub weights: WeightsDtype,
}

/// Loads the model `opts` names on its device; a device that cannot be
/// used is an error with the reason (a benchmark never falls back).
pub fn load_bench_model_on(
    opts: &BenchModel,
    seed: u64,
    data_dir: &Path,
) -> anyhow::Result<(Arc<Model>, Arc<Tokenizer>)> {
    let device =
        Device::probe(&opts.device).with_context(|| format!("--device {}", opts.device))?;
    let dir = match &opts.model {
        Some(d) => d.to_path_buf(),
        None => ensure_preset_layers(&opts.preset, seed, opts.layers, data_dir)?,
    };
    let t0 = tokio::time::Instant::now();
    let m = Model::load_with(&dir, device, opts.weights)
        .with_context(|| format!("loading {}", dir.display()))?;
    if !device.is_cpu() {
        eprintln!(
            "loaded {} on {} in {:.1} s",
            dir.display(),
            device.describe(),
            t0.elapsed().as_secs_f64()
        );
    }
    let t = Tokenizer::load(&dir)
        .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    Ok((Arc::new(m), Arc::new(t)))
}
