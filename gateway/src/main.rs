//! The `cake` binary: serving, workers, config checks; with the `tools`
//! feature (on by default) also model tools and benchmarks.

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "cake",
    version,
    about = "Cake: compute and load KV cache at once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The gateway: OpenAI-compatible HTTP in front of the workers.
    Serve(cmd::serve::ServeArgs),
    /// One engine over HTTP, for a gateway elsewhere.
    Worker(cmd::serve::WorkerArgs),
    /// Config files.
    Config {
        #[command(subcommand)]
        command: cmd::serve::ConfigCommand,
    },
    /// Model checkpoints.
    #[cfg(feature = "tools")]
    Model {
        #[command(subcommand)]
        command: cmd::model::ModelCommand,
    },
    /// Benchmarks (release builds; figures are ratios measured in one run).
    #[cfg(feature = "tools")]
    Bench {
        #[command(subcommand)]
        command: cmd::bench::BenchCommand,
    },
}

/// Without `RUST_LOG`: info, except the Redis cluster client's own
/// reconnect chatter (a line per attempt while a node is down); the KV
/// store and the limits log each outage once themselves.
const DEFAULT_LOG: &str = "info,redis::cluster_handling=error";

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => cmd::serve::serve(args),
        Command::Worker(args) => cmd::serve::worker(args),
        Command::Config { command } => cmd::serve::config(command),
        #[cfg(feature = "tools")]
        Command::Model { command } => cmd::model::run(command),
        #[cfg(feature = "tools")]
        Command::Bench { command } => cmd::bench::run(command),
    }
}
