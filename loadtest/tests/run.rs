//! Runs against the in-process mock: what a user would read in the report.
//! Latency checks are lower bounds (a measured latency can never be below
//! the delay the mock injected), so they cannot flake on a busy machine.

// Test helpers outside #[test] fns: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crate::support::{Reply, tokens_after};
use cake_loadtest::{Endpoint, Plan, RunSpec, RunSummary, Workload, run, summarize};

async fn run_toml(toml: &str, target: &str, endpoint: Endpoint) -> RunSummary {
    let w = Workload::from_toml(toml, "test").unwrap();
    let plan = Arc::new(Plan::build(&w));
    let spec = RunSpec {
        name: "test".into(),
        target: target.into(),
        endpoint,
        model: None,
        progress: false,
    };
    summarize(&run(&w, plan, &spec).await.unwrap())
}

const TWO_TENANTS: &str = r#"
name = "two"
seed = 5
duration_s = 1.0
[arrival]
process = "constant"
rate = 40.0
[[tenants]]
name = "a"
api_key = "key-a"
share = 1.0
ttft_slo_ms = 5000.0
[[tenants]]
name = "b"
api_key = "key-b"
share = 1.0
ttft_slo_ms = 50.0
[mix]
shared_prefix = 1.0
fresh = 1.0
[shared_prefix]
documents = 3
document_tokens = 20
[fresh]
prompt_tokens = { dist = "uniform", min = 5, max = 10 }
[output]
max_tokens = { dist = "fixed", value = 3 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_latencies_goodput_and_splits() {
    let mock = crate::support::start(|key| match key {
        "key-a" => tokens_after(10, Some("cached")),
        _ => tokens_after(150, Some("fresh")),
    })
    .await;
    let s = run_toml(TWO_TENANTS, &mock.url(), Endpoint::Completions).await;

    assert_eq!(s.planned, 40);
    assert_eq!(
        (s.overall.requests, s.overall.ok, s.overall.errors),
        (40, 40, 0)
    );
    assert_eq!(s.model, "mock-model", "model comes from GET /v1/models");
    let (a, b) = (&s.per_tenant["a"], &s.per_tenant["b"]);
    assert_eq!(a.requests + b.requests, 40);
    assert!(a.requests > 0 && b.requests > 0);
    // The mock's class follows the key, so the class split mirrors tenants.
    assert_eq!(s.per_class["cached"].requests, a.requests);
    assert_eq!(s.per_class["fresh"].requests, b.requests);
    assert_eq!(s.per_class.len(), 2);
    // Percentiles reflect the injected delays.
    assert!(a.ttft_ms.p50 >= 10.0, "a p50 {}", a.ttft_ms.p50);
    assert!(b.ttft_ms.p50 >= 150.0, "b p50 {}", b.ttft_ms.p50);
    assert!(b.ttft_ms.p50 > a.ttft_ms.p50);
    assert!(s.overall.ttft_ms.p50 <= s.overall.ttft_ms.p90);
    assert!(s.overall.ttft_ms.p90 <= s.overall.ttft_ms.p99);
    assert!(
        a.tpot_ms.p50 >= 5.0,
        "tpot {:?} ttft {:?} e2e {:?}",
        a.tpot_ms,
        a.ttft_ms,
        a.e2e_ms
    );
    assert!(a.e2e_ms.p50 >= 20.0);
    // Goodput: a's SLO (5 s) is always met, b's (50 ms) never can be.
    assert_eq!(a.good, a.ok);
    assert_eq!(b.good, 0);
    assert_eq!(s.overall.good, a.ok);
    assert!(s.overall.goodput_rps < s.overall.throughput_rps);
    // Token counts come from usage.
    assert!((s.overall.output_tokens_per_s * s.duration_s - 120.0).abs() < 1e-6);
    // Prompt kinds are both present and add up.
    let kinds: u64 = s.per_kind.values().map(|g| g.requests).sum();
    assert_eq!(kinds, 40);
    // Every request carried its tenant's key; shared prompts share a prefix.
    let seen = mock.seen.lock();
    assert_eq!(seen.len(), 40);
    assert!(seen.iter().all(|(k, _)| k == "key-a" || k == "key-b"));
    assert!(
        seen.iter()
            .all(|(_, j)| j["model"] == "mock-model" && j["max_tokens"] == 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_status_per_tenant() {
    let mock = crate::support::start(|key| match key {
        "limited" => Reply::Status(429),
        "broken" => Reply::Status(500),
        _ => tokens_after(1, None),
    })
    .await;
    let toml = r#"
duration_s = 1.0
[arrival]
process = "constant"
rate = 30.0
[[tenants]]
name = "ok"
api_key = "fine"
[[tenants]]
name = "limited"
api_key = "limited"
[[tenants]]
name = "broken"
api_key = "broken"
[fresh]
prompt_tokens = { dist = "fixed", value = 4 }
"#;
    let s = run_toml(toml, &mock.url(), Endpoint::Completions).await;
    let t = &s.per_tenant;
    assert_eq!(s.overall.requests, 30);
    assert_eq!(
        t["limited"].errors_by_status.get("429"),
        Some(&t["limited"].requests)
    );
    assert_eq!(
        t["broken"].errors_by_status.get("500"),
        Some(&t["broken"].requests)
    );
    assert_eq!(t["ok"].errors, 0);
    assert_eq!(
        s.overall.errors_by_status["429"] + s.overall.errors_by_status["500"],
        s.overall.errors
    );
    assert_eq!(s.overall.ok, t["ok"].requests);
    // No class reported by this server.
    assert_eq!(s.per_class.keys().collect::<Vec<_>>(), ["unreported"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lateness_is_reported_and_counted_in_latency() {
    // One request at a time against a 100 ms server, five planned 20 ms
    // apart: the fifth cannot leave before ~400 ms, 320 ms late.
    let mock = crate::support::start(|_| tokens_after(100, None)).await;
    let toml = r#"
duration_s = 0.1
max_in_flight = 1
[arrival]
process = "constant"
rate = 50.0
[fresh]
prompt_tokens = { dist = "fixed", value = 4 }
"#;
    let s = run_toml(toml, &mock.url(), Endpoint::Completions).await;
    assert_eq!(s.overall.ok, 5);
    assert!(s.send_lag_ms.max >= 300.0, "lag max {}", s.send_lag_ms.max);
    assert!(s.send_lag_ms.p50 <= s.send_lag_ms.p99 && s.send_lag_ms.p99 <= s.send_lag_ms.max);
    // Latency is measured from the intended time, so it includes the wait.
    assert!(
        s.overall.ttft_ms.max >= 400.0,
        "ttft max {}",
        s.overall.ttft_ms.max
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_refused_connections_are_errors() {
    let mock = crate::support::start(|_| tokens_after(5_000, None)).await;
    let toml = r#"
duration_s = 0.2
request_timeout_s = 0.3
[arrival]
process = "constant"
rate = 20.0
[fresh]
prompt_tokens = { dist = "fixed", value = 4 }
"#;
    let started = std::time::Instant::now();
    let s = run_toml(toml, &mock.url(), Endpoint::Completions).await;
    assert_eq!(s.overall.errors_by_status.get("timeout"), Some(&4));
    assert!(started.elapsed().as_secs() < 4, "the run stops by itself");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let s = run_toml(toml, &url, Endpoint::Completions).await;
    assert_eq!(s.overall.errors_by_status.get("connect"), Some(&4));
    assert_eq!(s.model, "default", "no /v1/models: falls back to default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_endpoint_sends_growing_conversations() {
    let mock = crate::support::start(|_| tokens_after(1, Some("cached"))).await;
    let toml = r#"
duration_s = 1.0
[arrival]
process = "constant"
rate = 12.0
[mix]
fresh = 0.0
conversation = 1.0
[conversation]
conversations = 2
turns = 3
system_tokens = 4
user_tokens = { dist = "fixed", value = 3 }
reply_tokens = { dist = "fixed", value = 2 }
"#;
    let s = run_toml(toml, &mock.url(), Endpoint::Chat).await;
    assert_eq!(s.overall.ok, 12);
    assert_eq!(s.per_kind["conversation"].requests, 12);
    let seen = mock.seen.lock();
    let lens: Vec<usize> = seen
        .iter()
        .map(|(_, j)| j["messages"].as_array().unwrap().len())
        .collect();
    // system + user, then + assistant + user per later turn.
    assert!(lens.iter().all(|l| [2, 4, 6].contains(l)), "{lens:?}");
    assert!(lens.contains(&6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_reports_steps_and_saturation() {
    let mock = crate::support::start(|_| tokens_after(1, None)).await;
    let toml = r#"
duration_s = 1.0
[arrival]
process = "ramp"
start_rate = 10.0
end_rate = 40.0
steps = 4
[fresh]
prompt_tokens = { dist = "fixed", value = 4 }
"#;
    let s = run_toml(toml, &mock.url(), Endpoint::Completions).await;
    assert_eq!(s.ramp.len(), 4);
    let planned: f64 = s.ramp.iter().map(|r| r.offered_rps * 0.25).sum();
    assert!((planned - s.planned as f64).abs() < 1e-6);
    assert_eq!(s.ramp[3].target_rps, 40.0);
    assert!(s.saturation.is_some());
}
