//! The open loop: send each request at its planned time whatever the server
//! does, and measure every latency from that planned time, so a slow server
//! cannot hide its queueing by slowing the sender down. Items that start a
//! closed loop hand it to `session.rs` at their planned time.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::client::{self, BodyParams, Endpoint, Outcome, Reuse};
use crate::exchange::{Ctx, Meta};
use crate::plan::{Kind, Plan, PromptSpec, Step};
use crate::prompt::PromptBook;
use crate::session;
use crate::workload::{PromptFormat, Tenant, Workload};

/// Where and how to send one run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Name of the run in reports.
    pub name: String,
    /// Base URL, `http://host:port`.
    pub target: String,
    /// Completions or chat.
    pub endpoint: Endpoint,
    /// Model to ask for; `None` asks `GET /v1/models`.
    pub model: Option<String>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The target URL is unusable.
    #[error("{0}")]
    Target(String),
    /// The workload cannot be sent as asked.
    #[error("{0}")]
    Workload(String),
}

/// One request as the user's clients would have seen it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Index into the run's tenants.
    pub tenant: u16,
    /// Prompt kind.
    pub kind: Kind,
    /// Ramp step.
    pub step: u16,
    /// Fan-out wave number, for wave members.
    pub wave: Option<u32>,
    /// Turn number (0-based), for conversation turns.
    pub turn: Option<u32>,
    /// Intended send time, from the run's start.
    pub intended: Duration,
    /// How late the request actually left.
    pub lag: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// Intended send → first token.
    pub ttft: Option<Duration>,
    /// Intended send → end of stream (or failure).
    pub e2e: Duration,
    /// `usage.prompt_tokens` (0 when not reported).
    pub prompt_tokens: u32,
    /// `usage.completion_tokens`, or token events counted.
    pub completion_tokens: u32,
    /// `usage.cake.class`, when reported.
    pub class: Option<String>,
    /// The usage fields about prefix reuse, when reported.
    pub reuse: Reuse,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Run name.
    pub name: String,
    /// Target URL.
    pub target: String,
    /// Model asked for.
    pub model: String,
    /// Workload name.
    pub workload: String,
    /// Tenants, indexed by [`Record::tenant`].
    pub tenants: Vec<Tenant>,
    /// Ramp steps (one for other processes).
    pub steps: Vec<Step>,
    /// Schedule length in seconds.
    pub schedule_s: f64,
    /// Requests planned (closed loops included, where their count is known).
    pub planned: usize,
    /// From the start to the last request's end.
    pub elapsed: Duration,
    /// One per finished request, in completion order.
    pub records: Vec<Record>,
}

fn auth_headers(tenants: &[Tenant]) -> Result<Vec<Option<HeaderValue>>, RunError> {
    tenants
        .iter()
        .map(|t| {
            if t.api_key.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&format!("Bearer {}", t.api_key))
                .map(Some)
                .map_err(|_| {
                    RunError::Workload(format!(
                        "tenant {:?}: api_key must be printable ASCII",
                        t.name
                    ))
                })
        })
        .collect()
}

fn progress_bar(total: u64, show: bool) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr_with_hz(5)
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} {elapsed_precise} [{bar:30}] {pos}/{len} done · {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn meta(item: &crate::plan::Planned) -> Meta {
    let (wave, turn) = match item.prompt {
        PromptSpec::Wave { wave, .. } => (Some(wave), None),
        PromptSpec::Turn { turn, .. } => (None, Some(turn)),
        _ => (None, None),
    };
    Meta {
        tenant: item.tenant,
        kind: item.kind,
        step: item.step,
        wave,
        turn,
    }
}

/// Whether an item starts a closed loop rather than being one request.
fn starts_loop(spec: PromptSpec) -> bool {
    matches!(spec, PromptSpec::Closed { .. } | PromptSpec::WaveSeries)
}

/// Sends the plan to the target and returns every request's record. Stops
/// by itself: each request is bounded by `request_timeout_s`, and each
/// closed loop by its number of turns (or waves, or `duration_s`).
pub async fn run(w: &Workload, plan: Arc<Plan>, spec: &RunSpec) -> Result<RunResult, RunError> {
    let chat = spec.endpoint == Endpoint::Chat;
    if chat && w.prompt_format == PromptFormat::Tokens {
        return Err(RunError::Workload(
            "prompt_format = \"tokens\" cannot be sent to the chat endpoint; use \"text\"".into(),
        ));
    }
    let uri = client::join(&spec.target, spec.endpoint.path()).map_err(RunError::Target)?;
    let tenants = w.effective_tenants();
    let auths = auth_headers(&tenants)?;
    let http = client::http_client(w.max_in_flight);
    let model = match &spec.model {
        Some(m) => m.clone(),
        None => {
            let key = auths.iter().flatten().next();
            client::discover_model(&http, &spec.target, key).await
        }
    };
    let total = plan.requests;
    let ctx = Arc::new(Ctx {
        http,
        uri,
        auths,
        timeout: Duration::from_secs_f64(w.request_timeout_s),
        start: Instant::now() + Duration::from_millis(50),
        chat,
        params: BodyParams {
            model: model.clone(),
            temperature: w.temperature,
            ignore_eos: w.ignore_eos,
        },
        book: PromptBook::new(w),
        workload: w.clone(),
        in_flight: Arc::new(Semaphore::new(w.max_in_flight)),
        records: Mutex::new(Vec::with_capacity(total)),
        dispatched: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });

    // Bodies are built ahead of their send time on another task, so that
    // building a long prompt never delays a send. Closed loops build their
    // own as they go.
    let (tx, mut rx) = mpsc::channel::<(usize, Bytes)>(4096);
    let producer = {
        let (plan, ctx) = (Arc::clone(&plan), Arc::clone(&ctx));
        tokio::spawn(async move {
            for (i, item) in plan.items.iter().enumerate() {
                let body = if starts_loop(item.prompt) {
                    Bytes::new()
                } else {
                    let prompt = ctx.book.build(i as u64, item.prompt, ctx.chat);
                    client::body(&ctx.params, &prompt, item.max_tokens)
                };
                if tx.send((i, body)).await.is_err() {
                    break;
                }
            }
        })
    };

    let bar = progress_bar(total as u64, spec.progress);
    bar.set_prefix(spec.name.clone());
    let ticker = {
        let (bar, ctx) = (bar.clone(), Arc::clone(&ctx));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let finished = ctx.done.load(Ordering::Relaxed);
                bar.set_position(finished);
                let open = ctx
                    .dispatched
                    .load(Ordering::Relaxed)
                    .saturating_sub(finished);
                bar.set_message(format!(
                    "{open} in flight · {} errors",
                    ctx.failed.load(Ordering::Relaxed)
                ));
            }
        })
    };

    let mut loops = Vec::new();
    while let Some((i, body)) = rx.recv().await {
        let Some(item) = plan.items.get(i) else { break };
        let due = ctx.start + item.at;
        if starts_loop(item.prompt) {
            loops.push(tokio::spawn(session::run(
                Arc::clone(&ctx),
                item.clone(),
                due,
            )));
            continue;
        }
        if due > Instant::now() {
            sleep_until(due).await;
        }
        // Past `max_in_flight` the sender waits; the wait shows as lag.
        let Some(permit) = ctx.permit().await else {
            break;
        };
        let (ctx, meta) = (Arc::clone(&ctx), meta(item));
        tokio::spawn(async move {
            ctx.exchange(meta, due, body, false, permit).await;
        });
    }
    let _ = producer.await;
    for l in loops {
        let _ = l.await;
    }
    // Every request ends by its own deadline (at most `timeout` after the
    // last due time, which is past); the margin only guards against tasks
    // an overloaded machine has not run yet.
    let permits = u32::try_from(w.max_in_flight).unwrap_or(u32::MAX);
    let _ = timeout_at(
        Instant::now() + ctx.timeout + Duration::from_secs(5),
        ctx.in_flight.acquire_many(permits),
    )
    .await;
    ticker.abort();
    bar.set_position(ctx.done.load(Ordering::Relaxed));
    bar.set_message(format!("{} errors", ctx.failed.load(Ordering::Relaxed)));
    bar.finish();

    let records = std::mem::take(&mut *ctx.records.lock());
    let elapsed = records
        .iter()
        .map(|r| r.intended + r.e2e)
        .max()
        .unwrap_or_default();
    Ok(RunResult {
        name: spec.name.clone(),
        target: spec.target.clone(),
        model,
        workload: w.name.clone(),
        tenants,
        steps: plan.steps.clone(),
        schedule_s: plan.duration_s,
        planned: total.max(records.len()),
        elapsed,
        records,
    })
}
