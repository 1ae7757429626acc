//! Finding (and creating once) the synthetic checkpoints that benchmarks
//! and the default server run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use cake_engine::init::{Dtype, InitOptions, preset, write_checkpoint_with};
use cake_engine::{Device, Model, Tokenizer};

/// The folder of preset `name` with weights from `seed` under
/// `data_dir/models/`, written there first if it is not yet.
pub fn ensure_preset(name: &str, seed: u64, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let p = preset(name).with_context(|| {
        format!(
            "unknown preset `{name}` (known: {})",
            cake_engine::init::PRESETS.join(", ")
        )
    })?;
    let dir = data_dir.join("models").join(format!("{name}-seed{seed}"));
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    eprintln!("creating the {name} model in {}", dir.display());
    write_checkpoint_with(&p, seed, Dtype::F32, &dir, &InitOptions::default())
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The model and tokenizer a benchmark runs: `model` when given, else the
/// preset's checkpoint (created once under `data_dir`).
pub fn load_bench_model(
    model: Option<&Path>,
    preset_name: &str,
    seed: u64,
    data_dir: &Path,
) -> anyhow::Result<(Arc<Model>, Arc<Tokenizer>)> {
    let dir = match model {
        Some(d) => d.to_path_buf(),
        None => ensure_preset(preset_name, seed, data_dir)?,
    };
    let m = Model::load(&dir, Device::Cpu).with_context(|| format!("loading {}", dir.display()))?;
    let t = Tokenizer::from_file(&dir.join("tokenizer.json"))
        .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    Ok((Arc::new(m), Arc::new(t)))
}
