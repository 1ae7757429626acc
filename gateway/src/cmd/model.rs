//! `cake model ...`: synthetic checkpoints.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use cake_engine::init::{self, Dtype, InitOptions, Preset};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

const GIB: f64 = (1u64 << 30) as f64;

/// Show a progress bar past this much tensor data.
const PROGRESS_BYTES: u64 = 256 << 20;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Write a checkpoint folder (Hugging Face layout) with seeded random weights.
    Init(InitArgs),
    /// List the presets with their shapes and sizes.
    Presets,
}

#[derive(Args)]
pub struct InitArgs {
    /// Model shape: tiny, small, llama-3-8b, llama-3-70b, longalpaca-7b.
    #[arg(long)]
    preset: String,
    /// Seed of the weights (same seed, same bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (created; must be missing or empty unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Weight type: f32, f16 or bf16 (default: f32 for tiny and small,
    /// bf16 for the real shapes).
    #[arg(long)]
    dtype: Option<String>,
    /// Replace an existing, non-empty output folder.
    #[arg(long)]
    force: bool,
    /// Largest safetensors file, in GiB, before the checkpoint is sharded.
    #[arg(long, default_value_t = 4.0)]
    shard_gib: f64,
}

pub fn run(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Init(args) => init_model(args),
        ModelCommand::Presets => {
            list_presets();
            Ok(())
        }
    }
}

fn find_preset(name: &str) -> anyhow::Result<Preset> {
    init::preset(name).with_context(|| {
        format!(
            "unknown preset `{name}` (known: {})",
            init::PRESETS.join(", ")
        )
    })
}

fn init_model(args: InitArgs) -> anyhow::Result<()> {
    let preset = find_preset(&args.preset)?;
    let dtype = match &args.dtype {
        None => preset.default_dtype,
        Some(s) => Dtype::parse(s)
            .with_context(|| format!("unknown --dtype `{s}` (use f32, f16 or bf16)"))?,
    };
    if args.shard_gib.is_nan() || args.shard_gib <= 0.0 {
        bail!("--shard-gib must be positive, got {}", args.shard_gib);
    }
    let data_bytes = preset.weight_bytes(dtype);
    let bar = (data_bytes > PROGRESS_BYTES).then(|| {
        let bar = ProgressBar::new(data_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!("writing {} {dtype}", preset.name));
        bar
    });
    let progress = bar.clone().map(|bar| -> init::ProgressFn {
        if std::io::stderr().is_terminal() {
            Arc::new(move |done, _total| bar.set_position(done))
        } else {
            // Logs get a line every 10% instead of a bar.
            let last = AtomicU64::new(0);
            Arc::new(move |done, total| {
                let tenth = done * 10 / total.max(1);
                if tenth > last.swap(tenth, Ordering::Relaxed) {
                    eprintln!(
                        "written {:.1} of {:.1} GiB ({}%)",
                        done as f64 / GIB,
                        total as f64 / GIB,
                        tenth * 10
                    );
                }
            })
        }
    });
    let opts = InitOptions {
        shard_bytes: (args.shard_gib * GIB) as u64,
        force: args.force,
        progress,
        ..InitOptions::default()
    };
    let result = init::write_checkpoint_with(&preset, args.seed, dtype, &args.out, &opts);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let written = match result {
        Ok(w) => w,
        Err(init::InitError::OutputExists(path)) => {
            bail!(
                "{} exists and is not empty; pass --force to replace it",
                path.display()
            )
        }
        Err(e) => return Err(e).context(format!("cake model init --preset {}", preset.name)),
    };
    eprintln!(
        "wrote {}: {} ({} parameters, {dtype}), {:.2} GiB in {} files",
        written.dir.display(),
        preset.name,
        human_count(written.params),
        written.bytes as f64 / GIB,
        written.files.len(),
    );
    if let Some(mem) = init::available(&args.out).memory_bytes
        && data_bytes > mem
    {
        eprintln!(
            "note: the weights take {:.1} GiB and this machine has {:.1} GiB of memory available: \
             serve this checkpoint on a machine with more memory (or a GPU)",
            data_bytes as f64 / GIB,
            mem as f64 / GIB
        );
    }
    Ok(())
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn list_presets() {
    println!(
        "{:<15} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8} {:>8} {:>10}  default",
        "preset",
        "layers",
        "hidden",
        "heads",
        "kv heads",
        "vocab",
        "context",
        "params",
        "GiB (bf16)"
    );
    for name in init::PRESETS {
        let Some(p) = init::preset(name) else {
            continue;
        };
        println!(
            "{:<15} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8} {:>8} {:>10.2}  {}",
            p.name,
            p.num_layers,
            p.hidden_size,
            p.num_heads,
            p.num_kv_heads,
            p.vocab_size,
            p.max_position_embeddings,
            human_count(p.param_count()),
            p.weight_bytes(Dtype::Bf16) as f64 / GIB,
            p.default_dtype,
        );
    }
}
