//! Benchmark programs behind `cake bench`: each returns a serialisable
//! report; the `cake` binary prints it and writes `--json`.

// Benchmarks measure wall time (engine/clippy.toml).
#![allow(clippy::disallowed_types)]
mod common;
pub mod decode;
pub mod detok;
pub mod mixed;
pub mod prefill;
pub mod store;
pub mod ttft;

pub use common::{bench_request, fill_store, random_prompt, run_request};
