//! How a request ends, streamed or not: a worker error as the client sees
//! it, and what a finished request reports (its usage, latency histograms
//! and token counters). Shared by the non-streaming path
//! ([`super::dispatch`]) and the streaming one ([`super::stream`]); the
//! worker's events themselves are read with [`crate::worker::next_event`].

use tokio::time::Instant;

use cake_engine::worker::Usage;

use super::ctx::Classified;
use crate::error::GatewayError;
use crate::telemetry as tm;
use crate::worker::{WorkerError, WorkerSlot};

/// A worker error as the client sees it (the one place): the client's
/// fault is a 400, a fault inside the worker a 500, a worker that broke or
/// went silent 502 / 504. A full worker is retried on the next one, so it
/// reaches the client only as [`GatewayError::Overloaded`] once every one
/// tried was full (see [`dispatch`]).
pub(crate) fn gateway_error(worker: &str, e: WorkerError) -> GatewayError {
    match e {
        WorkerError::BadRequest(m) => {
            GatewayError::field("request", format!("refused by worker {worker}: {m}"))
        }
        WorkerError::Timeout(after) => GatewayError::WorkerTimeout {
            worker: worker.to_string(),
            after,
        },
        WorkerError::Internal(m) => GatewayError::Internal(format!("worker {worker}: {m}")),
        other @ (WorkerError::Unreachable(_)
        | WorkerError::Overloaded(_)
        | WorkerError::Unavailable(_)
        | WorkerError::Unsupported(_)) => GatewayError::WorkerFailed {
            worker: worker.to_string(),
            message: other.to_string(),
        },
    }
}

/// The usage the client sees: the worker's counts, the gateway's class and
/// time to first token.
pub(crate) fn final_usage(
    ctx: &Classified,
    slot: &WorkerSlot,
    mut u: Usage,
    first_token: Option<Instant>,
) -> (Usage, f64) {
    if u.prompt_tokens == 0 {
        u.prompt_tokens = ctx.prompt.len();
    }
    if u.worker.is_empty() {
        u.worker = slot.name().to_string();
    }
    if u.cached_tokens == 0 && u.loaded_tokens == 0 && u.computed_tokens == 0 {
        u.cached_tokens = ctx.cached_tokens;
        u.computed_tokens = u.prompt_tokens;
    }
    let ttft_ms = first_token.map_or(0.0, |t| (t - ctx.rid.received).as_secs_f64() * 1e3);
    (u, ttft_ms)
}

/// Latency histograms and token counters of a finished request.
pub(crate) fn record_finished(ctx: &Classified, u: &Usage, first_token: Option<Instant>) {
    let now = Instant::now();
    let class = ctx.class.as_str();
    let ttft = first_token.map(|t| (t - ctx.rid.received).as_secs_f64());
    let tpot = match (first_token, u.completion_tokens) {
        (Some(t), n) if n > 1 => Some((now - t).as_secs_f64() / (n - 1) as f64),
        _ => None,
    };
    tm::latencies(
        &ctx.tenant.name,
        class,
        ttft,
        tpot,
        (now - ctx.rid.received).as_secs_f64(),
    );
    tm::tokens(class, u);
}
