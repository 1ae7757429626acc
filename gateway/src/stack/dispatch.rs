//! The bottom of the stack: sends the request to the placed workers in
//! turn until one takes it. A worker has taken a request once its first
//! event arrived; before that (nothing sent to the client yet) a failure
//! moves the request to the next worker. A non-streaming request is also
//! moved when its worker breaks before the end, since the client has seen
//! nothing of it.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cake_engine::TokenLogprob;
use cake_engine::worker::{TokenEvent, Usage, WorkEvent, WorkRequest};
use futures::StreamExt;
use http::{Response, StatusCode};
use tower::Service;

use super::ctx::{AppState, BoxFut, GenCtx};
use super::stream::stream_response;
use crate::api::{Renderer, usage_json};
use crate::error::GatewayError;
use crate::http::{Body, json_response};
use crate::telemetry as tm;
use crate::worker::{EventStream, WorkerError, WorkerPool, WorkerSlot};

#[derive(Clone)]
pub struct Dispatch {
    state: Arc<AppState>,
}

impl Dispatch {
    pub fn new(state: Arc<AppState>) -> Dispatch {
        Dispatch { state }
    }
}

/// A worker's event as a result: its `Error` event becomes an error.
pub(crate) fn event_result(ev: WorkEvent) -> Result<WorkEvent, WorkerError> {
    match ev {
        WorkEvent::Error { kind, message } => Err(WorkerError::from_kind(kind, message)),
        other => Ok(other),
    }
}

/// The next event, at most `idle` away; the end of the stream before
/// `Done` is an error.
pub(crate) async fn next_event(
    events: &mut EventStream,
    idle: Duration,
) -> Result<WorkEvent, WorkerError> {
    match tokio::time::timeout(idle, events.next()).await {
        Err(_) => Err(WorkerError::Timeout(idle)),
        Ok(None) => Err(WorkerError::Unreachable(
            "the event stream ended early".into(),
        )),
        Ok(Some(r)) => r.and_then(event_result),
    }
}

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

/// Submits to one worker and waits for its first event.
async fn start(
    slot: &WorkerSlot,
    req: WorkRequest,
) -> Result<(WorkEvent, EventStream), WorkerError> {
    let mut events = tokio::time::timeout(slot.timeout, slot.worker.submit(req))
        .await
        .map_err(|_| WorkerError::Timeout(slot.timeout))??;
    let first = next_event(&mut events, slot.idle_timeout).await?;
    Ok((first, events))
}

/// Everything a finished request produced.
pub(crate) struct Collected {
    pub tokens: Vec<TokenEvent>,
    pub text: String,
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    pub finish_reason: String,
    pub usage: Usage,
    pub first_token: Option<Instant>,
}

async fn collect(
    first: WorkEvent,
    mut events: EventStream,
    idle: Duration,
) -> Result<Collected, WorkerError> {
    let mut c = Collected {
        tokens: Vec::new(),
        text: String::new(),
        prompt_logprobs: None,
        finish_reason: String::new(),
        usage: Usage::default(),
        first_token: None,
    };
    let mut ev = first;
    loop {
        match ev {
            WorkEvent::PromptLogprobs { logprobs } => c.prompt_logprobs = Some(logprobs),
            WorkEvent::Token(t) => {
                c.first_token.get_or_insert_with(Instant::now);
                c.text.push_str(&t.text);
                c.tokens.push(t);
            }
            WorkEvent::Done {
                finish_reason,
                usage,
            } => {
                c.finish_reason = finish_reason;
                c.usage = usage;
                return Ok(c);
            }
            WorkEvent::Error { kind, message } => {
                return Err(WorkerError::from_kind(kind, message));
            }
        }
        ev = next_event(&mut events, idle).await?;
    }
}

/// The usage the client sees: the worker's counts, the gateway's class and
/// time to first token.
pub(crate) fn final_usage(
    ctx: &GenCtx,
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
pub(crate) fn record_finished(ctx: &GenCtx, u: &Usage, first_token: Option<Instant>) {
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

fn renderer(state: &AppState, ctx: &GenCtx) -> Renderer {
    let echo = ctx.params.echo.then(|| {
        (
            ctx.prompt.clone(),
            ctx.prompt_text.clone().unwrap_or_default(),
        )
    });
    Renderer::new(
        ctx.params.api,
        &ctx.rid.id,
        &state.model.name,
        state.model.tokenizer.clone(),
        ctx.params.options.logprobs,
        echo,
    )
}

fn failed(pool: &WorkerPool, slot: &WorkerSlot, e: &WorkerError) {
    if e.is_health_failure() {
        pool.failure(slot, e);
    }
    tm::retry(slot.name());
    tracing::info!(worker = slot.name(), error = %e, "worker failed; trying the next one");
}

async fn dispatch(state: Arc<AppState>, ctx: GenCtx) -> Result<Response<Body>, GatewayError> {
    let req = WorkRequest {
        id: ctx.rid.id.clone(),
        prompt: ctx.prompt.clone(),
        options: ctx.params.options.clone(),
        cache_group: ctx.tenant.cache_group.clone(),
        strategy: None,
        priority: ctx.tenant.entry.as_ref().map_or(0, |e| e.policy.priority),
    };
    let pool = &state.pool;
    let mut last: Option<(String, WorkerError)> = None;
    // Whether every worker tried was full (none broken or down).
    let mut all_full = true;
    let candidates = ctx.candidates.clone();
    for slot in candidates.iter().take(state.server.max_attempts) {
        ctx.rid
            .meta
            .update(|m| m.worker = Some(slot.name().to_string()));
        tracing::Span::current().record("worker", slot.name());
        let in_flight = pool.begin(slot, ctx.prompt.len());
        let (first, events) = match start(slot, req.clone()).await {
            Ok(x) => x,
            Err(e) if e.retryable() => {
                all_full &= matches!(e, WorkerError::Overloaded(_));
                failed(pool, slot, &e);
                last = Some((slot.name().to_string(), e));
                continue;
            }
            Err(e) => return Err(gateway_error(slot.name(), e)),
        };
        pool.success(slot);
        tm::worker_accepted(slot.name(), ctx.class.as_str());
        let mut render = renderer(&state, &ctx);
        if ctx.params.stream {
            return Ok(stream_response(
                ctx,
                slot.clone(),
                in_flight,
                render,
                first,
                events,
            ));
        }
        let total = match state.server.request_timeout_ms {
            0 => Duration::MAX,
            ms => Duration::from_millis(ms).saturating_sub(ctx.rid.received.elapsed()),
        };
        let c = match tokio::time::timeout(total, collect(first, events, slot.idle_timeout)).await {
            Err(_) => Err(WorkerError::Timeout(Duration::from_millis(
                state.server.request_timeout_ms,
            ))),
            Ok(r) => r,
        };
        let c = match c {
            Ok(c) => c,
            Err(
                e @ (WorkerError::Unreachable(_)
                | WorkerError::Overloaded(_)
                | WorkerError::Unavailable(_)),
            ) => {
                failed(pool, slot, &e);
                last = Some((slot.name().to_string(), e));
                continue;
            }
            Err(e) => return Err(gateway_error(slot.name(), e)),
        };
        drop(in_flight);
        let (usage, ttft_ms) = final_usage(&ctx, slot, c.usage, c.first_token);
        record_finished(&ctx, &usage, c.first_token);
        let body = render.full(
            &c.tokens,
            &c.text,
            c.prompt_logprobs.as_deref(),
            &c.finish_reason,
            usage_json(&usage, ctx.class.as_str(), ttft_ms),
        );
        return Ok(json_response(StatusCode::OK, &body));
    }
    let full = all_full && last.is_some();
    let detail = last.map_or(String::new(), |(w, e)| format!(" (last: worker {w}: {e})"));
    if full {
        return Err(GatewayError::Overloaded {
            detail,
            retry_after: state.admission.next_slot(),
        });
    }
    Err(super::admit::no_healthy_worker(&state).with_detail(detail))
}

impl Service<GenCtx> for Dispatch {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFut<Response<Body>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: GenCtx) -> Self::Future {
        Box::pin(dispatch(self.state.clone(), ctx))
    }
}
