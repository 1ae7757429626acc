//! The bottom of the stack: sends the request to the placed workers in
//! turn until one takes it. A worker has taken a request once its first
//! event arrived; before that (nothing sent to the client yet) a failure
//! moves the request to the next worker. A non-streaming request is also
//! moved when its worker breaks before the end, since the client has seen
//! nothing of it.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use cake_engine::TokenLogprob;
use cake_engine::worker::{TokenEvent, Usage, WorkEvent, WorkRequest};
use http::{Response, StatusCode};
use tower::Service;

use super::ctx::{BoxFut, ModelInfo, Placed, Tokenized};
use super::finish::{final_usage, gateway_error, record_finished};
use super::stream::stream_response;
use crate::admission::Admission;
use crate::api::{Renderer, usage_json};
use crate::config::ServerConfig;
use crate::error::GatewayError;
use crate::http::{Body, json_response};
use crate::telemetry as tm;
use crate::worker::{EventStream, WorkerError, WorkerPool, WorkerSlot, next_event};

/// The bottom of the generation stack: [`Placed`] in, the response out.
#[derive(Clone)]
pub struct Dispatch {
    pool: Arc<WorkerPool>,
    /// For the 503s' Retry-After.
    admission: Arc<Admission>,
    /// For rendering the answer.
    model: Arc<ModelInfo>,
    /// `server.max_attempts`: workers tried at most.
    max_attempts: usize,
    /// `server.request_timeout_ms` (0: none), from the request's arrival.
    request_timeout: Duration,
}

impl Dispatch {
    pub fn new(
        pool: Arc<WorkerPool>,
        admission: Arc<Admission>,
        model: Arc<ModelInfo>,
        server: &ServerConfig,
    ) -> Dispatch {
        Dispatch {
            pool,
            admission,
            model,
            max_attempts: server.max_attempts,
            request_timeout: match server.request_timeout_ms {
                0 => Duration::MAX,
                ms => Duration::from_millis(ms),
            },
        }
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

fn renderer(model: &ModelInfo, ctx: &Tokenized) -> Renderer {
    let echo = ctx.params.echo.then(|| {
        (
            ctx.prompt.clone(),
            ctx.prompt_text.clone().unwrap_or_default(),
        )
    });
    Renderer::new(
        ctx.params.api,
        &ctx.rid.id,
        &model.name,
        model.tokenizer.clone(),
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

async fn dispatch(d: Dispatch, mut ctx: Placed) -> Result<Response<Body>, GatewayError> {
    let req = WorkRequest {
        id: ctx.rid.id.clone(),
        prompt: ctx.prompt.clone(),
        options: ctx.params.options.clone(),
        cache_group: ctx.tenant.cache_group.clone(),
        strategy: None,
        priority: ctx.tenant.entry.as_ref().map_or(0, |e| e.policy.priority),
    };
    let pool = &d.pool;
    let mut last: Option<(String, WorkerError)> = None;
    // Whether every worker tried was full (none broken or down).
    let mut all_full = true;
    let candidates = std::mem::take(&mut ctx.candidates);
    for slot in candidates.iter().take(d.max_attempts) {
        ctx.rid
            .meta
            .update(|m| m.worker = Some(slot.name().to_string()));
        tracing::Span::current().record("worker", slot.name());
        ctx.holding.admitted.attempt(slot);
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
        let mut render = renderer(&d.model, &ctx);
        if ctx.params.stream {
            return Ok(stream_response(ctx, slot.clone(), render, first, events));
        }
        let total = d.request_timeout.saturating_sub(ctx.rid.received.elapsed());
        let c = match tokio::time::timeout(total, collect(first, events, slot.idle_timeout)).await {
            Err(_) => Err(WorkerError::Timeout(d.request_timeout)),
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
        ctx.holding.admitted.worker_done();
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
            retry_after: d.admission.next_slot(),
        });
    }
    Err(d.admission.no_healthy_worker().with_detail(detail))
}

impl Service<Placed> for Dispatch {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFut<Response<Body>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: Placed) -> Self::Future {
        Box::pin(dispatch(self.clone(), ctx))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use cake_engine::worker::WorkErrorKind;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::super::fixture::{fleet, holding, model};
    use super::*;
    use crate::config::PolicyConfig;

    async fn placed(adm: &Admission, pool: &WorkerPool) -> Placed {
        Placed {
            holding: holding(adm, &[1, 2, 3]).await,
            candidates: pool.slots().to_vec(),
        }
    }

    /// A worker that refuses before the first event is passed over; the
    /// next one's answer is the response, and nothing stays in flight.
    #[tokio::test]
    async fn a_refusing_worker_is_retried_on_the_next() {
        let (mocks, pool, adm) = fleet(2, &PolicyConfig::default());
        mocks[0].set_healthy(false);
        let d = Dispatch::new(pool.clone(), adm.clone(), model(), &ServerConfig::default());
        let r = d.oneshot(placed(&adm, &pool).await).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
        assert_eq!((mocks[0].submitted(), mocks[1].submitted()), (0, 1));
        assert_eq!(mocks[1].last_request().unwrap().prompt, vec![1, 2, 3]);
        assert_eq!((adm.in_flight(0), adm.in_flight(1)), (0, 0));
    }

    /// Every worker full is 429-style overload with a retry hint, not a
    /// broken worker.
    #[tokio::test]
    async fn every_worker_full_is_overloaded() {
        let (mocks, pool, adm) = fleet(2, &PolicyConfig::default());
        for m in &mocks {
            m.fail_with(Some(WorkErrorKind::Overloaded));
        }
        let d = Dispatch::new(pool.clone(), adm.clone(), model(), &ServerConfig::default());
        let e = d.oneshot(placed(&adm, &pool).await).await.err().unwrap();
        assert!(matches!(e, GatewayError::Overloaded { .. }), "{e}");
        assert_eq!(pool.healthy(), 2, "a full worker is not a failed one");
    }
}
