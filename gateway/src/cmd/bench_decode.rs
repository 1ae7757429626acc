//! `cake bench decode`.

use std::path::PathBuf;

use anyhow::Context;
use cake_engine::bench::decode::{self, DecodeBench};
use cake_engine::bench::detok;

use super::model_dir::{BenchModel, load_bench_model_on};

#[derive(clap::Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    m: BenchModel,
    /// Tokens in each stream's KV cache before decoding.
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// Streams decoded together, one batched step each.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Decode steps timed.
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Folder for created checkpoints.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Seed of the synthetic weights and of the prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Instead of the model's steps, time detokenizing an output of this
    /// many tokens with the model's tokenizer: the whole output decoded
    /// again at every step against one token at a time (the stream).
    #[arg(long)]
    detok_tokens: Option<usize>,
}

pub fn run(args: DecodeArgs) -> anyhow::Result<()> {
    let (model, tokenizer) = load_bench_model_on(&args.m, args.seed, &args.data_dir)?;
    if let Some(n) = args.detok_tokens {
        anyhow::ensure!(n >= 10, "--detok-tokens must be at least 10");
        let r = detok::run(&tokenizer, n)?;
        println!(
            "detokenize {} tokens: whole output each step {:.1} ms ({:.1} us a token at the end), \
             streamed {:.1} ms ({:.1} us a token at the end): {:.1}x; same text: {}",
            r.tokens,
            r.whole_ms,
            r.whole_last_us,
            r.stream_ms,
            r.stream_last_us,
            r.speedup,
            r.same_text
        );
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&r)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    eprintln!(
        "decode of {} stream(s) after {} tokens on {} ({})",
        args.batch,
        args.context,
        args.m
            .model
            .as_deref()
            .map_or(args.m.preset.clone(), |d| d.display().to_string()),
        model.device().describe(),
    );
    let bench = DecodeBench {
        context: args.context,
        batch: args.batch,
        steps: args.steps,
        seed: args.seed,
    };
    let r = decode::run(&model, &bench)?;
    println!(
        "decode            {:.1} tokens/s ({:.2} ms a step of {})",
        r.tokens_per_s, r.step_ms, r.batch
    );
    println!(
        "bytes a step      {:.1} MB of weights + {:.1} MB of KV",
        r.weight_bytes as f64 / 1e6,
        r.kv_bytes as f64 / 1e6
    );
    println!(
        "bound             {:.1} tokens/s at the {:.1} GB/s read rate measured now",
        r.bound_tokens_per_s, r.read_gbps
    );
    println!(
        "fraction          {:.2} of the memory-bandwidth bound",
        r.fraction_of_bound
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
