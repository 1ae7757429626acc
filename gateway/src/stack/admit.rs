//! Admission, in order: the tenant's limits (prompt length: 413; request
//! rate, prompt-token rate, concurrency: 429), then the predicted wait (the
//! gateway's queue ahead at the slots' measured rate, scaled by how far
//! recent waits ran past their predictions, plus the chosen worker's own
//! backlog): past the queue deadline, refused at once (429
//! `queue_timeout`), SLO or not; then SLO shedding (a request predicted to
//! miss its tenant's TTFT objective is refused at once, 429), then a
//! dispatch slot: at once when one is free and no one waits, otherwise in
//! the tenants' fair queue (full: 429; still waiting at the deadline: 429).
//! Every refusal carries `Retry-After`: the predicted time until a slot
//! frees for it ([`Wait::retry_after`]). The decisions are `cake_policy`'s
//! ([`cake_policy::TenantLimiter`], [`cake_policy::decide`],
//! [`cake_policy::FairQueue`], [`cake_policy::SlotMeter`]).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cake_policy::{Decision, Refusal, Share, ShedInput, TenantPolicy, decide};
use tower::{Layer, Service};

use super::ctx::{AppState, BoxFut, GenCtx};
use crate::admission::{Admission, PlaceRequest, Wait};
use crate::error::GatewayError;
use crate::telemetry as tm;

#[derive(Clone)]
pub struct AdmitLayer {
    state: Arc<AppState>,
}

impl AdmitLayer {
    pub fn new(state: Arc<AppState>) -> AdmitLayer {
        AdmitLayer { state }
    }
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    state: Arc<AppState>,
}

fn limited(
    tenant: &str,
    limit: &'static str,
    reason: String,
    retry_after: Duration,
) -> GatewayError {
    tm::refused(tenant, limit);
    GatewayError::RateLimited {
        limit,
        reason,
        retry_after,
    }
}

async fn admit(state: &AppState, ctx: &mut GenCtx) -> Result<(), GatewayError> {
    let adm = &state.admission;
    let live = adm.live();
    let name = ctx.tenant.name.clone();
    let default_policy;
    let policy: &TenantPolicy = match &ctx.tenant.entry {
        Some(e) => &e.policy,
        None => {
            default_policy = TenantPolicy::new("default");
            &default_policy
        }
    };
    let cost = ctx.prompt.len() as u64;
    let now = Instant::now();
    if let Some(e) = &ctx.tenant.entry {
        match e.admit(now, cost).await {
            Ok(p) => ctx.held.permit = Some(p),
            Err(Refusal::PromptTooLong { max, got }) => {
                tm::refused(&name, "max_prompt_tokens");
                return Err(GatewayError::PromptTooLong {
                    tokens: got as usize,
                    limit: max as usize,
                });
            }
            Err(Refusal::Limited(l)) => {
                return Err(limited(
                    &name,
                    l.limit.as_str(),
                    l.to_string(),
                    l.retry_after,
                ));
            }
        }
    }
    if state.pool.healthy() == 0 {
        return Err(no_healthy_worker(state));
    }
    let deadline = policy
        .queue_deadline
        .unwrap_or_else(|| live.policy.queue_deadline());
    let share = policy.share();
    let req = PlaceRequest {
        prompt: &ctx.prompt,
        cached_tokens: ctx.cached_tokens,
        cache_group: &ctx.tenant.cache_group,
        chunks: None,
    };
    let estimate = adm.estimate(&req);
    let wait = predicted_wait(adm, &name, share, cost, estimate.as_ref());
    if wait.total() > deadline {
        return Err(limited(
            &name,
            "queue_timeout",
            format!(
                "predicted wait {:?} (queue {:?}, worker {:?}) is past the queue deadline of {deadline:?}",
                wait.total(),
                wait.queue,
                wait.worker
            ),
            wait.retry_after(deadline),
        ));
    }
    if let Some(slo) = policy.ttft_slo
        && let Some((p, _)) = estimate
    {
        let input = ShedInput {
            predicted_ttft: p.ttft,
            idle_ttft: p.idle_ttft,
            queue_wait: wait.queue,
            slo: Some(slo),
            queue_deadline: Some(deadline),
        };
        if let Decision::Shed { retry_after } = decide(&input) {
            let expected = input.queue_wait + input.predicted_ttft;
            return Err(limited(
                &name,
                "ttft_slo",
                format!(
                    "predicted time to first token {expected:?} misses the objective of {slo:?}"
                ),
                retry_after,
            ));
        }
    }
    let rx = adm
        .enqueue(&name, share, cost, now + deadline, wait.queue_measured)
        .map_err(|e| {
            limited(
                &name,
                "queue_full",
                e.to_string(),
                wait.retry_after(deadline),
            )
        })?;
    match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(slot)) => {
            ctx.held.slot = Some(slot);
            Ok(())
        }
        _ => {
            // Mispredicted, or the fleet slowed: when a request sent now
            // would be served in time.
            let estimate = adm.estimate(&req);
            let wait = predicted_wait(adm, &name, share, cost, estimate.as_ref());
            Err(limited(
                &name,
                "queue_timeout",
                format!("no worker free within the queue deadline of {deadline:?}"),
                wait.retry_after(deadline),
            ))
        }
    }
}

/// A request's predicted wait: the gateway's queue ahead of it (measured
/// slot turnover; before any, the fleet's prefill rate), and the backlog
/// of the worker the cost model picks (its report plus the ledger: its
/// TTFT there less its TTFT on the idle worker).
fn predicted_wait(
    adm: &Admission,
    tenant: &str,
    share: Share,
    cost: u64,
    estimate: Option<&(cake_policy::Prediction, f64)>,
) -> Wait {
    let rate = estimate.map_or(0.0, |(_, r)| *r);
    let mut w = adm.queue_wait(tenant, share, cost, rate);
    if let Some((p, _)) = estimate {
        w.worker = p.ttft.saturating_sub(p.idle_ttft);
    }
    w
}

/// 503: no worker is up; the next health check may bring one back.
pub(crate) fn no_healthy_worker(state: &AppState) -> GatewayError {
    GatewayError::NoHealthyWorker {
        detail: String::new(),
        retry_after: Duration::from_millis(state.server.health_interval_ms),
    }
}

impl<S> Service<GenCtx> for Admit<S>
where
    S: Service<GenCtx, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = BoxFut<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut ctx: GenCtx) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            admit(&state, &mut ctx).await?;
            inner.call(ctx).await
        })
    }
}
