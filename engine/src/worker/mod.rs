//! The Worker API: an [`Engine`] runs one model for many requests — a step
//! scheduler (continuous batching under a token budget) for compute and an
//! I/O executor for chunk loads, shared by its requests.
//!
//! The gateway reaches an embedded worker through [`Engine`] directly and a
//! remote one over HTTP with the same types ([`WorkRequest`],
//! [`WorkEvent`], [`LoadReport`]).

// The step scheduler runs on its own thread with std channels and std
// time; no test pauses a clock there (engine/clippy.toml).
#![allow(clippy::disallowed_types)]

mod config;
mod engine;
mod loader;
mod scheduler;
mod seq;
mod siblings;
mod stats;
mod telemetry;
mod types;

pub use config::{BudgetOrder, EngineConfig};
pub use engine::Engine;
pub use telemetry::describe_metrics;
pub use types::{
    Classification, LoadReport, RequestClass, Strategy, TokenEvent, Usage, WorkErrorKind,
    WorkEvent, WorkOptions, WorkRequest,
};
