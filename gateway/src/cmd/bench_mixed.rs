//! `cake bench mixed`.

use std::path::PathBuf;

use anyhow::Context;
use cake_engine::bench::mixed::{self, MixedBench};
use cake_engine::worker::EngineConfig;

use super::model_dir::{BenchModel, load_bench_model_on};

#[derive(clap::Args)]
pub struct MixedArgs {
    #[command(flatten)]
    m: BenchModel,
    /// Tokens of the long cached request (the paper: 16384).
    #[arg(long, default_value_t = 4096)]
    cached_tokens: usize,
    /// Fresh requests (the paper: 22 of 32–448 tokens).
    #[arg(long, default_value_t = 22)]
    fresh: usize,
    #[arg(long, default_value_t = 32)]
    fresh_min: usize,
    #[arg(long, default_value_t = 448)]
    fresh_max: usize,
    /// Output tokens per request.
    #[arg(long, default_value_t = 8)]
    max_tokens: usize,
    /// Link bandwidth in bytes/s; 0: the balanced one.
    #[arg(long, default_value_t = 0.0)]
    bandwidth: f64,
    #[arg(long, default_value_t = 256)]
    chunk: usize,
    /// Tokens per scheduler step.
    #[arg(long, default_value_t = 512)]
    token_budget: usize,
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Runs of each order (alternating which goes first); medians are
    /// reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: MixedArgs) -> anyhow::Result<()> {
    let (model, tokenizer) = load_bench_model_on(&args.m, 0, &args.data_dir)?;
    anyhow::ensure!(
        args.fresh_min >= 1 && args.fresh_min <= args.fresh_max,
        "--fresh-min must be in 1..=--fresh-max"
    );
    anyhow::ensure!(args.repeat >= 1, "--repeat must be at least 1");
    let bench = MixedBench {
        cached_tokens: args.cached_tokens,
        fresh: args.fresh,
        fresh_min: args.fresh_min,
        fresh_max: args.fresh_max,
        max_tokens: args.max_tokens,
        bandwidth: args.bandwidth,
        engine: EngineConfig {
            chunk_tokens: args.chunk,
            token_budget: args.token_budget,
            max_running: args.fresh + 1,
            ..Default::default()
        },
        seed: args.seed,
        repeat: args.repeat,
    };
    bench.engine.validate().map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt.block_on(mixed::run(model, tokenizer, &bench, |l| eprintln!("  {l}")))?;
    println!(
        "{:>9} {:>9} {:>16} {:>15} {:>16} {:>12} {:>6}",
        "order",
        "total s",
        "cached TTFT ms",
        "cached loaded",
        "fresh TTFT ms",
        "budget fill",
        "steps"
    );
    for x in &r.runs {
        println!(
            "{:>9} {:>9.2} {:>16.0} {:>15} {:>16.0} {:>11.0}% {:>6}",
            x.order,
            x.total_s,
            x.cached_ttft_ms,
            x.cached_loaded_tokens,
            x.fresh_ttft_ms_mean,
            x.budget_fill * 100.0,
            x.steps
        );
    }
    let mut pairs = r.pair_speedups.clone();
    pairs.sort_by(f64::total_cmp);
    println!(
        "adaptive finishes {:.2}x faster than fcfs (medians of {} runs each; throughput +{:.0}%), \
         link {:.2} GB/s; per pair {:.2}..{:.2}",
        r.speedup,
        r.pair_speedups.len(),
        (r.speedup - 1.0) * 100.0,
        r.bandwidth_bytes_per_s / 1e9,
        pairs.first().copied().unwrap_or(0.0),
        pairs.last().copied().unwrap_or(0.0),
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
