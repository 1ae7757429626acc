//! Finding (and creating once) the synthetic checkpoints that benchmarks
//! and the default server run.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cake_engine::init::{Dtype, InitOptions, preset, write_checkpoint_with};

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
