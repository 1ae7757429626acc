//! The Worker API's data: what a request asks, what comes back, and how a
//! worker reports its load. The same shapes travel in-process (embedded
//! worker) and as JSON over HTTP (remote worker).

use serde::{Deserialize, Serialize};

use crate::TokenLogprob;

/// How a cached prefix gets its KV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Recompute everything (ignore the store).
    Compute,
    /// Load every stored chunk; compute only the missing ones.
    Load,
    /// Compute from the front while loading from the back; stop where they
    /// meet.
    #[default]
    Cake,
    /// Cake, or one resource alone when the cost model predicts the other
    /// is far slower.
    Auto,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [
        Strategy::Compute,
        Strategy::Load,
        Strategy::Cake,
        Strategy::Auto,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Compute => "compute",
            Strategy::Load => "load",
            Strategy::Cake => "cake",
            Strategy::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A request's class at the gateway: does its prompt have stored chunks?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestClass {
    /// Some of its chunks are stored: mostly I/O.
    Cached,
    /// None are: mostly compute.
    Fresh,
}

impl RequestClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestClass::Cached => "cached",
            RequestClass::Fresh => "fresh",
        }
    }
}

/// Sampling and output options of one request (the engine-side subset of
/// the OpenAI fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkOptions {
    pub max_tokens: usize,
    pub min_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub repetition_penalty: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Alternatives per token to report; `None`: no log-probabilities.
    pub logprobs: Option<usize>,
    /// Report the prompt tokens' log-probabilities too (echo + logprobs).
    pub prompt_logprobs: bool,
}

impl Default for WorkOptions {
    fn default() -> Self {
        WorkOptions {
            max_tokens: 16,
            min_tokens: 0,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: false,
        }
    }
}

/// One request to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkRequest {
    /// The gateway's request id (for logs and traces).
    pub id: String,
    pub prompt: Vec<u32>,
    pub options: WorkOptions,
    /// Cache group of the tenant: part of the chunk-key namespace.
    pub cache_group: String,
    /// Overrides the worker's configured strategy (benchmarks).
    pub strategy: Option<Strategy>,
    /// The tenant's priority: within each rank of the step order (and when
    /// waiting for a running slot) a higher priority goes first.
    #[serde(default)]
    pub priority: u8,
}

/// Where a request's prompt KV came from, and how long it took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens this request did not compute: loaded from a store
    /// or handed over by a sibling (`loaded_tokens + shared_tokens`).
    pub cached_tokens: usize,
    pub loaded_tokens: usize,
    pub computed_tokens: usize,
    /// Prompt tokens taken from another request on the same worker that
    /// was computing them at the time.
    #[serde(default)]
    pub shared_tokens: usize,
    pub ttft_ms: f64,
    /// Time from arrival to the last token.
    pub total_ms: f64,
    pub strategy: String,
    pub worker: String,
}

/// A token produced for a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenEvent {
    pub token: u32,
    /// Text made final by this token (may be empty while held back).
    pub text: String,
    pub logprob: Option<TokenLogprob>,
}

/// What a worker streams back for one request, in order: at most one
/// `PromptLogprobs`, then `Token`s, then exactly one `Done` or `Error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkEvent {
    PromptLogprobs {
        logprobs: Vec<Option<TokenLogprob>>,
    },
    Token(TokenEvent),
    Done {
        finish_reason: String,
        usage: Usage,
    },
    Error {
        kind: WorkErrorKind,
        message: String,
    },
}

/// Who is at fault when a request fails on a worker, and whether another
/// worker may take it ([`crate::EngineError::kind`] gives an engine
/// error's). It travels in `WorkEvent::Error` and in a remote worker's
/// error bodies; a kind this build does not know reads as `internal`, so
/// an older gateway's parse never fails on a newer worker's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkErrorKind {
    /// The request itself is wrong (bad option, prompt too long).
    BadRequest,
    /// The worker is full (`max_running + max_waiting` requests): another
    /// may take it now, this one later.
    Overloaded,
    /// The worker is shutting down or draining: another may take it.
    Unavailable,
    /// A bug or fault inside the worker.
    #[serde(other)]
    Internal,
}

/// A worker's load, for placement. Rates are moving averages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub worker: String,
    /// Prompt tokens waiting to be computed (fresh prefill + Cake compute
    /// sides + one per running decode).
    pub queued_compute_tokens: u64,
    /// Bytes of KV chunk loads queued or in flight.
    pub queued_io_bytes: u64,
    /// Requests admitted and not finished.
    pub running: u64,
    /// Chunk compute cost `t(i) = a + b·i`, seconds (0 until measured).
    pub compute_a_s: f64,
    pub compute_b_s: f64,
    /// Measured load bandwidth, bytes/s (0 until measured).
    pub bandwidth_bytes_per_s: f64,
    /// KV bytes per token in the store's codec.
    pub kv_bytes_per_token: u64,
    pub chunk_tokens: u64,
}

/// The answer to a presence lookup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub class: Option<RequestClass>,
    /// Which full chunks are stored, in order.
    pub stored: Vec<bool>,
    pub cached_tokens: usize,
    /// The worker's chunk size (`0`: not said).
    #[serde(default)]
    pub chunk_tokens: usize,
}
