//! `cake-gateway`: all of Cake's HTTP — the OpenAI-compatible gateway
//! (hyper + tower, the stack composed in `stack`), the worker trait and
//! its embedded, remote (`cake worker`) and OpenAI pass-through forms,
//! config loading, metrics, and (feature `tools`, on by default) the
//! gateway benchmark.
//!
//! Depends on `cake-engine` (the workers' engine, tokenizer, KV store
//! config) and `cake-policy`. Errors become HTTP responses only in
//! `http::error`.

mod admission;
mod api;
mod app;
#[cfg(feature = "tools")]
pub mod bench;
pub mod config;
mod error;
mod http;
mod stack;
mod telemetry;
pub mod worker;

pub use api::{Api, ChatTemplate, GenParams, PromptInput, parse_request};
pub use app::{Gateway, StartError, build_workers, listen, model_info, start_engines};
pub use config::Config;
pub use error::{Fault, GatewayError};
pub use http::{ServerHandle, error_response};
pub use stack::{ModelInfo, Tenant};
pub use telemetry::{install as install_metrics, render as render_metrics};
