//! `cake bench ttft`.

use std::path::PathBuf;

use anyhow::Context;
use cake_engine::bench::ttft::{self, Bandwidths, TtftBench, TtftReport};
use cake_engine::kv::Codec;
use cake_engine::worker::EngineConfig;

use super::model_dir::{BenchModel, load_bench_model_on};

#[derive(clap::Args)]
pub struct TtftArgs {
    #[command(flatten)]
    m: BenchModel,
    /// Prompt lengths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2048,8192")]
    context: Vec<usize>,
    /// Link bandwidths in bytes/s (comma-separated; k/M/G suffixes), or
    /// `auto`: 0.1x to 10x the bandwidth at which load-only equals
    /// compute-only for each context.
    #[arg(long, default_value = "auto")]
    bandwidth: String,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 256)]
    chunk: usize,
    /// Chunk loads in flight per request.
    #[arg(long, default_value_t = 2)]
    io_depth: usize,
    /// Stored chunk codec: f32, f16, bf16, int8.
    #[arg(long, default_value = "f32")]
    codec: String,
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rounds of all four strategies (one run each per round); TTFTs are
    /// the medians over the rounds, ratios the medians of each round's own.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw TTFT against bandwidth per strategy here (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn parse_bytes(s: &str) -> anyhow::Result<f64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("--bandwidth: `{s}` is not a number of bytes/s"))?;
    anyhow::ensure!(v > 0.0, "--bandwidth: `{s}` must be positive");
    Ok(v * mult)
}

pub fn run(args: TtftArgs) -> anyhow::Result<()> {
    let (model, tokenizer) = load_bench_model_on(&args.m, 0, &args.data_dir)?;
    let bandwidths = if args.bandwidth == "auto" {
        Bandwidths::Auto(vec![0.1, 0.3, 0.6, 1.0, 1.6, 3.0, 10.0])
    } else {
        Bandwidths::List(
            args.bandwidth
                .split(',')
                .map(parse_bytes)
                .collect::<anyhow::Result<_>>()?,
        )
    };
    let codec = Codec::ALL
        .into_iter()
        .find(|c| c.name() == args.codec)
        .with_context(|| {
            format!(
                "--codec: `{}` is not one of f32, f16, bf16, int8",
                args.codec
            )
        })?;
    let bench = TtftBench {
        contexts: args.context.clone(),
        bandwidths,
        engine: EngineConfig {
            chunk_tokens: args.chunk,
            token_budget: args.chunk.max(512),
            io_queue_depth: args.io_depth,
            codec,
            ..Default::default()
        },
        seed: args.seed,
        repeat: args.repeat,
    };
    bench.engine.validate().map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(ttft::run(model, tokenizer, &bench, |line| {
        eprintln!("  {line}")
    }))?;
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        super::plot::ttft_plot(&report, path)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

fn print_table(r: &TtftReport) {
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>12} {:>10} {:>14}",
        "context",
        "GB/s",
        "compute",
        "load",
        "cake",
        "auto",
        "oracle",
        "cake/oracle",
        "cake/min(c,l)",
        "auto/min",
        "cake meets at"
    );
    for x in &r.ratios {
        let (ctx, bw) = (x.context, x.bandwidth_bytes_per_s);
        let t = |s: &str| r.get(ctx, bw, s).map(|x| x.ttft_ms).unwrap_or(f64::NAN);
        let (c, l, k, a, o) = (t("compute"), t("load"), t("cake"), t("auto"), t("oracle"));
        let meet = r
            .get(ctx, bw, "cake")
            .map(|x| format!("{}c/{}l", x.computed_tokens, x.loaded_tokens))
            .unwrap_or_default();
        let (ko, km, am) = (x.cake_over_oracle, x.cake_over_min, x.auto_over_min);
        println!(
            "{ctx:>7} {:>9.3} {c:>9.0} {l:>9.0} {k:>9.0} {a:>9.0} {o:>9.0} {ko:>11.2} {km:>12.2} {am:>10.2} {meet:>14}",
            bw / 1e9,
        );
    }
    println!(
        "(ms, medians over the rounds; ratios: medians of each round's own ratios; meeting point: tokens computed / loaded; the chunk holding the last token is always computed)"
    );
}
