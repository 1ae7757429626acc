//! One module per `cake` subcommand.
pub mod bench;
mod bench_decode;
mod bench_mixed;
mod bench_prefill;
mod bench_store;
mod bench_ttft;
pub mod model;
mod model_dir;
mod plot;
pub mod serve;
