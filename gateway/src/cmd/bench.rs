//! `cake bench ...`: each benchmark's work lives in `cake_engine::bench`
//! (or the gateway for HTTP ones); these modules parse arguments and print.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prefill throughput, per-chunk compute cost, dense GFLOP/s vs GEMM.
    Prefill(super::bench_prefill::PrefillArgs),
    /// Decode tokens/s against the memory-bandwidth bound, both measured
    /// in the same run.
    Decode(super::bench_decode::DecodeArgs),
    /// Load bandwidth through a KV store vs a raw read of the same bytes.
    Store(super::bench_store::StoreArgs),
    /// TTFT of a cached prompt under compute, load, cake, auto and the
    /// oracle, across contexts and storage bandwidths.
    Ttft(super::bench_ttft::TtftArgs),
    /// One long cached request among short fresh ones: FCFS vs the
    /// adaptive budget order.
    Mixed(super::bench_mixed::MixedArgs),
    /// Latency the gateway adds in front of a no-op worker, and its max req/s.
    Gateway(cake_gateway::bench::GatewayBenchArgs),
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Prefill(args) => super::bench_prefill::run(args),
        BenchCommand::Decode(args) => super::bench_decode::run(args),
        BenchCommand::Store(args) => super::bench_store::run(args),
        BenchCommand::Ttft(args) => super::bench_ttft::run(args),
        BenchCommand::Mixed(args) => super::bench_mixed::run(args),
        BenchCommand::Gateway(args) => cake_gateway::bench::run(args),
    }
}
