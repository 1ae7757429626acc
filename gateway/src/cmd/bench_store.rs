//! `cake bench store`: load bandwidth through a KV store against a raw
//! read of the same bytes (the work is `cake_engine::bench::store`).

use std::path::PathBuf;

use anyhow::Context;
use cake_engine::bench::store::{BenchTier, StoreBench, StoreReport};
use cake_engine::kv::Codec;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum TierArg {
    Memory,
    Disk,
    Redis,
}

#[derive(clap::Args)]
pub struct StoreArgs {
    /// The tier to measure.
    #[arg(long, value_enum, default_value = "disk")]
    tier: TierArg,
    /// Redis to use for `--tier redis`; without it a local redis-server is
    /// started on a free port for the run.
    #[arg(long)]
    redis_url: Option<String>,
    /// A Redis Cluster's seed nodes for `--tier redis`, comma separated
    /// (`redis://h1:7000,redis://h2:7000`): the store in cluster mode, the
    /// raw reads through the cluster client.
    #[arg(long, value_delimiter = ',', conflicts_with = "redis_url")]
    redis_nodes: Vec<String>,
    /// `--tier redis` without `--redis-nodes`: start a local cluster of
    /// this many masters, each with a replica, for the run.
    #[arg(long, default_value_t = 0, conflicts_with_all = ["redis_url", "redis_nodes"])]
    redis_cluster: usize,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 256)]
    chunk_tokens: usize,
    /// Chunks stored and read back per pass.
    #[arg(long, default_value_t = 256)]
    chunks: usize,
    /// Chunk codec: f32, f16, bf16 or int8.
    #[arg(long, default_value = "bf16")]
    codec: Codec,
    /// Reads in flight at once.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Rounds (figures are medians over them).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Folder for `--tier disk` (default: a temporary one, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// `--tier disk`: drop the chunk files from the page cache before each
    /// pass, so reads come from the device.
    #[arg(long)]
    cold: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    let bench = StoreBench {
        tier: match args.tier {
            TierArg::Memory => BenchTier::Memory,
            TierArg::Disk => BenchTier::Disk,
            TierArg::Redis => BenchTier::Redis,
        },
        redis_url: args.redis_url,
        redis_nodes: args.redis_nodes,
        local_cluster_masters: args.redis_cluster,
        chunk_tokens: args.chunk_tokens,
        chunks: args.chunks,
        codec: args.codec,
        depth: args.depth,
        rounds: args.rounds,
        dir: args.dir,
        cold: args.cold,
        ..StoreBench::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let report = runtime.block_on(cake_engine::bench::store::run(&bench, &|line| {
        tracing::info!("{line}")
    }))?;
    print_table(&report);
    if let Some(path) = args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_table(r: &StoreReport) {
    let mib = r.bytes as f64 / (1 << 20) as f64;
    println!(
        "tier {}  codec {}  {} chunks × {} tokens ({:.0} KiB each, {:.1} MiB)  depth {}  rounds {}{}",
        r.tier.as_str(),
        r.codec,
        r.chunks,
        r.chunk_tokens,
        r.chunk_bytes as f64 / 1024.0,
        mib,
        r.depth,
        r.rounds,
        if r.cold { "  cold" } else { "" }
    );
    println!("{:<26} {:>10} {:>14}", "read", "GB/s", "tokens/s");
    for (name, gbps, tps) in [
        ("raw (same bytes)", r.raw_gb_per_s, r.raw_tokens_per_s),
        ("store load (checked)", r.load_gb_per_s, r.load_tokens_per_s),
        (
            "store load + decode f32",
            r.load_decode_gb_per_s,
            r.load_decode_tokens_per_s,
        ),
    ] {
        println!("{name:<26} {gbps:>10.2} {tps:>14.0}");
    }
    let per_gb = r.chunk_tokens as f64 / r.chunk_bytes as f64 * 1e9;
    for (name, gbps) in [
        ("codec encode (no I/O)", r.codec_encode_gb_per_s),
        ("codec decode (no I/O)", r.codec_decode_gb_per_s),
    ] {
        println!("{name:<26} {gbps:>10.2} {:>14.0}", gbps * per_gb);
    }
    if !r.redis_nodes.is_empty() {
        println!(
            "redis cluster: chunks on {} masters (seeds {})",
            r.redis_masters_used,
            r.redis_nodes.join(",")
        );
    }
    println!("store load / raw: {:.0}%", r.load_vs_raw * 100.0);
}
