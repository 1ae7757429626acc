//! One module per `cake` subcommand. Benchmarks and model tools need the
//! `tools` feature.
#[cfg(feature = "tools")]
pub mod bench;
#[cfg(feature = "tools")]
mod bench_decode;
#[cfg(feature = "tools")]
mod bench_mixed;
#[cfg(feature = "tools")]
mod bench_prefill;
#[cfg(feature = "tools")]
mod bench_store;
#[cfg(feature = "tools")]
mod bench_ttft;
#[cfg(feature = "tools")]
pub mod model;
#[cfg(feature = "tools")]
mod model_dir;
#[cfg(feature = "tools")]
mod plot;
pub mod serve;
