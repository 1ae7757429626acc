//! Metrics (`cake_<area>_<thing>_<unit>`, Prometheus text at `/metrics`),
//! described once at start. Labels come from bounded sets: tenant names
//! from the config, classes, HTTP statuses, error types, worker names.

use std::sync::OnceLock;

use cake_engine::worker::LoadReport;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, seconds: 1 ms to 2 min.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Installs the Prometheus recorder (once per process) and describes every
/// metric. `None` when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    describe();
                    cake_engine::kv::describe_metrics();
                    cake_engine::worker::describe_metrics();
                    register_at_zero();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// The metrics as Prometheus text.
pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(h)) => {
            h.run_upkeep();
            h.render()
        }
        _ => String::new(),
    }
}

fn describe() {
    describe_counter!(
        "cake_gateway_requests_total",
        "Requests answered, by tenant, class (cached, fresh, none) and HTTP status."
    );
    describe_counter!(
        "cake_gateway_errors_total",
        "Requests that failed, by error type."
    );
    describe_counter!(
        "cake_gateway_cancelled_total",
        "Requests whose client went away before the end, by class."
    );
    describe_counter!(
        "cake_gateway_retries_total",
        "Requests moved to another worker after a failure, by the worker that failed."
    );
    describe_histogram!(
        "cake_gateway_ttft_seconds",
        "Time from a request's arrival to its first token, by tenant and class."
    );
    describe_histogram!(
        "cake_gateway_tpot_seconds",
        "Mean time per output token after the first, by tenant and class."
    );
    describe_histogram!(
        "cake_gateway_e2e_seconds",
        "Time from a request's arrival to its last byte, by tenant and class."
    );
    describe_counter!(
        "cake_gateway_prompt_tokens_total",
        "Prompt tokens of finished requests, by class."
    );
    describe_counter!(
        "cake_gateway_completion_tokens_total",
        "Generated tokens, by class."
    );
    describe_counter!(
        "cake_gateway_cached_tokens_total",
        "Prompt tokens not computed (loaded, or taken from a sibling request), by class."
    );
    describe_counter!(
        "cake_gateway_loaded_tokens_total",
        "Prompt tokens whose KV was loaded from a store, by class."
    );
    describe_counter!(
        "cake_gateway_shared_tokens_total",
        "Prompt tokens whose KV was taken from another request computing it on the same worker, by class."
    );
    describe_counter!(
        "cake_gateway_computed_tokens_total",
        "Prompt tokens whose KV was computed, by class."
    );
    describe_gauge!(
        "cake_worker_in_flight_requests",
        "Requests the gateway sent a worker and has not seen finish."
    );
    describe_gauge!(
        "cake_worker_up",
        "1 while a worker is healthy, 0 while marked down."
    );
    describe_counter!(
        "cake_worker_requests_total",
        "Requests a worker accepted, by worker and class (where placement sent them)."
    );
    describe_counter!(
        "cake_worker_failures_total",
        "Failed checks and requests, by worker."
    );
    describe_gauge!(
        "cake_worker_backlog_compute_tokens",
        "A worker's reported queued compute tokens."
    );
    describe_gauge!(
        "cake_worker_backlog_io_bytes",
        "A worker's reported queued KV load bytes."
    );
    describe_gauge!(
        "cake_worker_running_requests",
        "Requests a worker reports running."
    );
    describe_counter!(
        "cake_gateway_refused_total",
        "Requests refused by admission, by tenant and limit (requests_per_second, prompt_tokens_per_minute, max_concurrent, max_prompt_tokens, ttft_slo, queue_full, queue_timeout)."
    );
    describe_gauge!(
        "cake_gateway_queue_waiting_requests",
        "Requests waiting in the tenants' queues."
    );
    describe_gauge!(
        "cake_gateway_dispatched_requests",
        "Requests holding a dispatch slot."
    );
    describe_counter!(
        "cake_config_reloads_total",
        "Config reloads that put a new config in force."
    );
    describe_counter!(
        "cake_config_reload_errors_total",
        "Config reloads refused (the file did not parse or validate); the old config stays."
    );
}

/// Every error type (the `type` label of `cake_gateway_errors_total`).
const ERROR_TYPES: &[&str] = &[
    "invalid_request_error",
    "not_found_error",
    "request_too_large",
    "authentication_error",
    "rate_limit_error",
    "service_unavailable",
    "worker_error",
    "worker_timeout",
    "internal_error",
];

/// Request classes as labels.
const CLASSES: &[&str] = &["cached", "fresh"];

/// Tenant limits as `cake_gateway_refused_total` labels them.
const LIMITS: &[&str] = &[
    "requests_per_second",
    "prompt_tokens_per_minute",
    "max_concurrent",
    "max_prompt_tokens",
    "ttft_slo",
    "queue_full",
    "queue_timeout",
];

/// Metrics whose labels are known before any request, registered at 0 so
/// `/metrics` lists them from the start (a counter that appears only
/// after its first event cannot be told from one that is missing).
fn register_at_zero() {
    counter!("cake_config_reloads_total").increment(0);
    counter!("cake_config_reload_errors_total").increment(0);
    counter!("cake_limits_redis_errors_total").increment(0);
    gauge!("cake_gateway_queue_waiting_requests").set(0.0);
    gauge!("cake_gateway_dispatched_requests").set(0.0);
    for t in ERROR_TYPES {
        counter!("cake_gateway_errors_total", "type" => *t).increment(0);
    }
    for c in CLASSES.iter().chain(&["none"]) {
        counter!("cake_gateway_cancelled_total", "class" => *c).increment(0);
        for name in [
            "cake_gateway_prompt_tokens_total",
            "cake_gateway_completion_tokens_total",
            "cake_gateway_cached_tokens_total",
            "cake_gateway_loaded_tokens_total",
            "cake_gateway_shared_tokens_total",
            "cake_gateway_computed_tokens_total",
        ] {
            counter!(name, "class" => *c).increment(0);
        }
    }
}

/// Registers at 0 the metrics labelled by worker and by tenant, once the
/// configured names are known.
pub fn register_names(workers: &[&str], tenants: &[&str]) {
    for w in workers {
        let w = w.to_string();
        counter!("cake_worker_failures_total", "worker" => w.clone()).increment(0);
        counter!("cake_gateway_retries_total", "worker" => w.clone()).increment(0);
        gauge!("cake_worker_in_flight_requests", "worker" => w.clone()).set(0.0);
        for c in CLASSES {
            counter!("cake_worker_requests_total", "worker" => w.clone(), "class" => *c)
                .increment(0);
        }
    }
    for t in tenants {
        for l in LIMITS {
            counter!("cake_gateway_refused_total", "tenant" => t.to_string(), "limit" => *l)
                .increment(0);
        }
    }
}

pub fn refused(tenant: &str, limit: &'static str) {
    counter!("cake_gateway_refused_total", "tenant" => tenant.to_string(), "limit" => limit)
        .increment(1);
}

pub fn queue_waiting(waiting: usize, dispatched: usize) {
    gauge!("cake_gateway_queue_waiting_requests").set(waiting as f64);
    gauge!("cake_gateway_dispatched_requests").set(dispatched as f64);
}

pub fn config_reloaded(ok: bool) {
    if ok {
        counter!("cake_config_reloads_total").increment(1);
    } else {
        counter!("cake_config_reload_errors_total").increment(1);
    }
}

pub fn request_done(tenant: &str, class: &str, status: u16) {
    counter!("cake_gateway_requests_total", "tenant" => tenant.to_string(),
        "class" => class.to_string(), "status" => status.to_string())
    .increment(1);
}

pub fn worker_accepted(worker: &str, class: &str) {
    counter!("cake_worker_requests_total", "worker" => worker.to_string(),
        "class" => class.to_string())
    .increment(1);
}

pub fn error(error_type: &'static str) {
    counter!("cake_gateway_errors_total", "type" => error_type).increment(1);
}

pub fn cancelled(class: &str) {
    counter!("cake_gateway_cancelled_total", "class" => class.to_string()).increment(1);
}

pub fn retry(worker: &str) {
    counter!("cake_gateway_retries_total", "worker" => worker.to_string()).increment(1);
}

/// Latencies of a finished request, seconds.
pub fn latencies(tenant: &str, class: &str, ttft: Option<f64>, tpot: Option<f64>, e2e: f64) {
    let labels = [("tenant", tenant.to_string()), ("class", class.to_string())];
    if let Some(t) = ttft {
        histogram!("cake_gateway_ttft_seconds", &labels).record(t);
    }
    if let Some(t) = tpot {
        histogram!("cake_gateway_tpot_seconds", &labels).record(t);
    }
    histogram!("cake_gateway_e2e_seconds", &labels).record(e2e);
}

/// Token counts of a finished request.
pub fn tokens(class: &str, u: &cake_engine::worker::Usage) {
    let c = class.to_string();
    counter!("cake_gateway_prompt_tokens_total", "class" => c.clone())
        .increment(u.prompt_tokens as u64);
    counter!("cake_gateway_completion_tokens_total", "class" => c.clone())
        .increment(u.completion_tokens as u64);
    counter!("cake_gateway_cached_tokens_total", "class" => c.clone())
        .increment(u.cached_tokens as u64);
    counter!("cake_gateway_loaded_tokens_total", "class" => c.clone())
        .increment(u.loaded_tokens as u64);
    counter!("cake_gateway_shared_tokens_total", "class" => c.clone())
        .increment(u.shared_tokens as u64);
    counter!("cake_gateway_computed_tokens_total", "class" => c)
        .increment(u.computed_tokens as u64);
}

pub fn worker_in_flight(worker: &str, n: u64) {
    gauge!("cake_worker_in_flight_requests", "worker" => worker.to_string()).set(n as f64);
}

pub fn worker_failure(worker: &str) {
    counter!("cake_worker_failures_total", "worker" => worker.to_string()).increment(1);
}

pub fn worker_up(worker: &str, up: bool) {
    gauge!("cake_worker_up", "worker" => worker.to_string()).set(if up { 1.0 } else { 0.0 });
}

pub fn worker_load(worker: &str, r: &LoadReport) {
    let w = worker.to_string();
    gauge!("cake_worker_backlog_compute_tokens", "worker" => w.clone())
        .set(r.queued_compute_tokens as f64);
    gauge!("cake_worker_backlog_io_bytes", "worker" => w.clone()).set(r.queued_io_bytes as f64);
    gauge!("cake_worker_running_requests", "worker" => w).set(r.running as f64);
}
