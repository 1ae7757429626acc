//! `cake bench prefill`.

use std::path::PathBuf;

use anyhow::Context;
use cake_engine::bench::prefill::{self, PrefillBench};

use super::model_dir::{BenchModel, load_bench_model_on};

#[derive(clap::Args)]
pub struct PrefillArgs {
    #[command(flatten)]
    m: BenchModel,
    /// Prompt tokens to prefill.
    #[arg(long, default_value_t = 8192)]
    context: usize,
    /// Tokens per prefill chunk.
    #[arg(long = "chunk", default_value_t = 256)]
    chunk: usize,
    /// Folder for created checkpoints.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Seed of the synthetic weights and of the prompt.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: PrefillArgs) -> anyhow::Result<()> {
    let (model, _) = load_bench_model_on(&args.m, args.seed, &args.data_dir)?;
    eprintln!(
        "prefill of {} tokens in chunks of {} on {} ({}, {} CPU threads)",
        args.context,
        args.chunk,
        args.m
            .model
            .as_deref()
            .map_or(args.m.preset.clone(), |d| d.display().to_string()),
        model.device().describe(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let bench = PrefillBench {
        context: args.context,
        chunk_tokens: args.chunk,
        seed: args.seed,
    };
    let r = prefill::run(&model, &bench, |done, all| {
        if done == all || done % 8 == 0 {
            eprint!("\r  chunk {done}/{all}");
        }
        if done == all {
            eprintln!();
        }
    })?;
    println!(
        "context           {} tokens, chunks of {}",
        r.context, r.chunk_tokens
    );
    println!(
        "prefill           {:.2} s, {:.0} tokens/s",
        r.total_s, r.tokens_per_s
    );
    println!(
        "chunk fit         t(i) = {:.2} ms + {:.4} ms * i   (r2 {:.3})",
        r.chunk_fit.a_ms, r.chunk_fit.b_ms, r.chunk_fit.r2
    );
    let n = r.chunk_ms.len();
    for i in [0, n / 4, n / 2, 3 * n / 4, n.saturating_sub(1)] {
        if let Some(t) = r.chunk_ms.get(i) {
            println!("  chunk {i:>5}      {t:.2} ms");
        }
    }
    println!(
        "dense layers      {:.1} GFLOP/s = {:.0}% of the {} GEMM rate ({:.1} GFLOP/s at {}^3; {:.1} at the model's {}x{}x{})",
        r.dense_gflops,
        100.0 * r.dense_gflops / r.gemm_gflops,
        r.gemm_kind,
        r.gemm_gflops,
        r.gemm_size,
        r.gemm_model_shape_gflops,
        r.chunk_tokens,
        model.config().hidden_size,
        model.config().intermediate_size,
    );
    let p = &r.profile;
    let total = p.dense_s + p.attention_s + p.other_s;
    println!(
        "time              dense {:.0}%, attention {:.0}%, other {:.0}%",
        100.0 * p.dense_s / total,
        100.0 * p.attention_s / total,
        100.0 * p.other_s / total
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
