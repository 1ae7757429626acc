//! `cake-loadtest`: open-loop load testing of OpenAI-compatible servers.
//!
//! A workload file (`config/workloads/*.toml`) fixes tenants, an arrival
//! process, a prompt mix and a seed; [`Plan::build`] turns it into a
//! schedule before anything is sent; [`run`] sends each request at its
//! planned time over HTTP and times it from that time (so a slow server
//! cannot hide its queueing); items that start a closed loop (a closed
//! conversation, back-to-back fan-out waves) run it from their planned
//! time, each request waiting for the answer it depends on; [`summarize`]
//! turns the records into the numbers of the table, the `--json` file and
//! the `--plot` SVG, prefix reuse included.
//!
//! This crate depends on no other Cake crate: it speaks HTTP like any client,
//! and uses only standard OpenAI request and response fields (reading
//! `usage.cake` — class, computed and shared tokens — when a Cake gateway
//! adds it).

mod client;
mod exchange;
mod noop;
mod plan;
mod prompt;
mod report;
mod rng;
mod runner;
mod serve;
mod session;
mod sse;
mod workload;

pub use client::{Endpoint, Outcome, Reuse};
pub use noop::{NoopOptions, serve as serve_noop};
pub use plan::{Kind, Plan, Planned, Step};
pub use report::{
    GroupStats, Lag, Percentiles, RampStep, ReportError, ReuseStats, RunSummary, Saturation,
    WaveRow, WaveStats, render_table, summarize, to_json, write_json, write_plot,
};
pub use runner::{Record, RunError, RunResult, RunSpec, run};
pub use serve::{DEFAULT_SERVE_CMD, ServeError, Served, command_line};
pub use workload::{
    Arrival, ArrivalProcess, Conversation, ConversationMode, Dist, DistKind, Fanout, Fresh, Mix,
    Output, PromptFormat, SharedPrefix, Skew, Tenant, WavePacing, Workload, WorkloadError,
};
