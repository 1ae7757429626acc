//! The open loop: send each request at its planned time whatever the server
//! does, and measure every latency from that planned time, so a slow server
//! cannot hide its queueing by slowing the sender down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::client::{self, BodyParams, Endpoint, Outcome, Sent};
use crate::plan::{Kind, Plan, Step};
use crate::prompt::PromptBook;
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
    /// Requests planned.
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

/// Sends the plan to the target and returns every request's record. Stops
/// by itself: each request is bounded by `request_timeout_s`.
pub async fn run(w: &Workload, plan: Arc<Plan>, spec: &RunSpec) -> Result<RunResult, RunError> {
    let chat = spec.endpoint == Endpoint::Chat;
    if chat && w.prompt_format == PromptFormat::Tokens {
        return Err(RunError::Workload(
            "prompt_format = \"tokens\" cannot be sent to the chat endpoint; use \"text\"".into(),
        ));
    }
    let uri = client::join(&spec.target, spec.endpoint.path()).map_err(RunError::Target)?;
    let tenants = w.effective_tenants();
    let auths = Arc::new(auth_headers(&tenants)?);
    let http = client::http_client(w.max_in_flight);
    let model = match &spec.model {
        Some(m) => m.clone(),
        None => {
            let key = auths.iter().flatten().next();
            client::discover_model(&http, &spec.target, key).await
        }
    };
    let params = BodyParams {
        model: model.clone(),
        temperature: w.temperature,
        ignore_eos: w.ignore_eos,
    };
    let book = Arc::new(PromptBook::new(w));
    let timeout = Duration::from_secs_f64(w.request_timeout_s);
    let total = plan.items.len();

    // Bodies are built ahead of their send time on another task, so that
    // building a long prompt never delays a send.
    let (tx, mut rx) = mpsc::channel::<(usize, Bytes)>(4096);
    let producer = {
        let plan = Arc::clone(&plan);
        tokio::spawn(async move {
            for (i, item) in plan.items.iter().enumerate() {
                let prompt = book.build(i as u64, item.prompt, chat);
                let body = client::body(&params, &prompt, item.max_tokens);
                if tx.send((i, body)).await.is_err() {
                    break;
                }
            }
        })
    };

    let records = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(Semaphore::new(w.max_in_flight));
    let bar = progress_bar(total as u64, spec.progress);
    bar.set_prefix(spec.name.clone());
    let dispatched = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (bar, done, failed) = (bar.clone(), done.clone(), failed.clone());
        let dispatched = dispatched.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let finished = done.load(Ordering::Relaxed);
                bar.set_position(finished);
                let open = dispatched.load(Ordering::Relaxed).saturating_sub(finished);
                bar.set_message(format!(
                    "{open} in flight · {} errors",
                    failed.load(Ordering::Relaxed)
                ));
            }
        })
    };

    let start = Instant::now() + Duration::from_millis(50);
    while let Some((i, body)) = rx.recv().await {
        let Some(item) = plan.items.get(i) else { break };
        let due = start + item.at;
        if due > Instant::now() {
            sleep_until(due).await;
        }
        // Past `max_in_flight` the sender waits; the wait shows as lag.
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        dispatched.fetch_add(1, Ordering::Relaxed);
        let (http, uri, auths) = (http.clone(), uri.clone(), Arc::clone(&auths));
        let (records, done, failed) = (records.clone(), done.clone(), failed.clone());
        let (tenant, kind, step, at) = (item.tenant, item.kind, item.step, item.at);
        tokio::spawn(async move {
            let lag = Instant::now().saturating_duration_since(due);
            let auth = auths.get(usize::from(tenant)).and_then(Option::as_ref);
            let req = client::post(&uri, auth, body);
            let sent = timeout_at(due + timeout, client::send(&http, req))
                .await
                .unwrap_or_else(|_| Sent::failed(Outcome::Timeout));
            let end = Instant::now();
            if sent.outcome != Outcome::Ok {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            let rec = Record {
                tenant,
                kind,
                step,
                intended: at,
                lag,
                ttft: sent.first_token.map(|t| t.saturating_duration_since(due)),
                e2e: end.saturating_duration_since(due),
                outcome: sent.outcome,
                prompt_tokens: sent.prompt_tokens,
                completion_tokens: sent.completion_tokens,
                class: sent.class,
            };
            if let Ok(mut r) = records.lock() {
                r.push(rec);
            }
            done.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    let _ = producer.await;
    // Every request ends by its own deadline (at most `timeout` after the
    // last due time, which is past); the margin only guards against tasks
    // an overloaded machine has not run yet.
    let permits = u32::try_from(w.max_in_flight).unwrap_or(u32::MAX);
    let _ = timeout_at(
        Instant::now() + timeout + Duration::from_secs(5),
        in_flight.acquire_many(permits),
    )
    .await;
    ticker.abort();
    bar.set_position(done.load(Ordering::Relaxed));
    bar.set_message(format!("{} errors", failed.load(Ordering::Relaxed)));
    bar.finish();

    let records = match records.lock() {
        Ok(mut r) => std::mem::take(&mut *r),
        Err(_) => Vec::new(),
    };
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
        planned: total,
        elapsed,
        records,
    })
}
