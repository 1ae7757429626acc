//! Tenants and admission, end to end: API keys, limits with `Retry-After`,
//! concurrency slots held until a stream ends, weighted and prioritised
//! queues, bounded overload, cache groups, adaptive placement and hot
//! reload — all against mock workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use cake_engine::worker::LoadReport;
use cake_gateway::worker::{MockOptions, MockWorker};
use cake_gateway::{Config, Gateway};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};

async fn gateway(toml: &str, workers: &[MockWorker]) -> Gateway {
    let cfg = Config::parse(toml).unwrap();
    cfg.validate().unwrap();
    tenant_gateway(&cfg, workers).await
}

async fn call(gw: &Gateway, key: Option<&str>, body: &str) -> Reply {
    complete_as(gw, key, body).await
}

/// The request itself, for tests that read the response as it streams.
fn req(gw: &Gateway, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/v1/completions", gw.local_addr()))
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

const SMALL: &str = r#"{"prompt": "hello world", "max_tokens": 1}"#;

fn two_tenants(extra_a: &str, extra_b: &str) -> String {
    format!(
        "[[tenants]]\nname = \"a\"\napi_key_sha256 = [\"{KEY_A}\"]\n{extra_a}\n\
         [[tenants]]\nname = \"b\"\napi_key_sha256 = [\"{KEY_B}\"]\n{extra_b}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_key_is_401_known_key_is_200() {
    let m = mock("w");
    let gw = gateway(&two_tenants("", ""), &[m]).await;
    let r = call(&gw, Some("nope"), SMALL).await;
    assert_eq!(r.error(401)["error"]["code"], "invalid_api_key");
    call(&gw, None, SMALL).await.error(401);
    let r = call(&gw, Some("key-a"), SMALL).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Probes need no key.
    assert_eq!(get(gw.local_addr(), "/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenants_means_everyone_is_default() {
    let m = mock("w");
    let gw = gateway("", std::slice::from_ref(&m)).await;
    assert_eq!(call(&gw, None, SMALL).await.status, 200);
    assert_eq!(call(&gw, Some("anything"), SMALL).await.status, 200);
    assert_eq!(m.last_request().unwrap().cache_group, "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_429_with_retry_after_and_the_limit_name() {
    let m = mock("w");
    let gw = gateway(
        &two_tenants("[tenants.limits]\nrequests_per_s = 1.0", ""),
        &[m],
    )
    .await;
    assert_eq!(call(&gw, Some("key-a"), SMALL).await.status, 200);
    let r = call(&gw, Some("key-a"), SMALL).await;
    let e = r.error(429);
    assert_eq!(e["error"]["type"], "rate_limit_error");
    assert_eq!(e["error"]["code"], "requests_per_second");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests_per_second")
    );
    assert_eq!(r.headers["retry-after"], "1");
    // Another tenant is not affected.
    assert_eq!(call(&gw, Some("key-b"), SMALL).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_prompt_limit_is_413() {
    let m = mock("w");
    let gw = gateway(
        &two_tenants("[tenants.limits]\nmax_prompt_tokens = 4", ""),
        &[m],
    )
    .await;
    let body = r#"{"prompt": [1, 2, 3, 4, 5, 6], "max_tokens": 1}"#;
    let r = call(&gw, Some("key-a"), body).await;
    assert_eq!(r.error(413)["error"]["code"], "prompt_too_long");
    assert_eq!(call(&gw, Some("key-b"), body).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slot_is_held_until_the_stream_ends() {
    let m = slow_mock("w", 40);
    let gw = gateway(
        &two_tenants("[tenants.limits]\nmax_concurrent = 1", ""),
        &[m],
    )
    .await;
    let stream = r#"{"prompt": "hi", "max_tokens": 8, "stream": true}"#;
    // A stream in progress holds the slot.
    let resp = client()
        .request(req(&gw, Some("key-a"), stream))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = call(&gw, Some("key-a"), SMALL).await;
    assert_eq!(r.error(429)["error"]["code"], "max_concurrent");
    assert!(r.headers.contains_key("retry-after"));
    // Its end gives the slot back.
    resp.into_body().collect().await.unwrap();
    let ok = admitted_within_2s(&gw, "key-a").await;
    assert!(ok, "slot given back after the stream ended");
    // A client that leaves mid-stream gives it back too.
    let resp = client()
        .request(req(&gw, Some("key-a"), stream))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(call(&gw, Some("key-a"), SMALL).await.status, 429);
    drop(resp);
    let ok = admitted_within_2s(&gw, "key-a").await;
    assert!(ok, "slot given back after the client left");
}

/// Whether a small request of `key`'s tenant succeeds within 2 s of tries.
async fn admitted_within_2s(gw: &Gateway, key: &str) -> bool {
    for _ in 0..100 {
        if call(gw, Some(key), SMALL).await.status == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

const ONE_SLOT: &str = "[policy]\nmax_in_flight_per_worker = 1\nfair_quantum_tokens = 1\n\
     queue_per_tenant = 64\nqueue_deadline_ms = 60000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_three_to_one_share_one_slow_worker() {
    let m = slow_mock("w", 8);
    let toml = format!("{ONE_SLOT}{}", two_tenants("weight = 3", "weight = 1"));
    let gw = Arc::new(gateway(&toml, &[m]).await);
    let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, key) in ["key-a", "key-b"].into_iter().enumerate() {
        for _ in 0..8 {
            let (gw, served, stop) = (gw.clone(), served.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let r = call(&gw, Some(key), SMALL).await;
                    assert_eq!(r.status, 200, "{}", r.text());
                    if !stop.load(Ordering::SeqCst) {
                        served[i].fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
    }
    eventually("160 served", || {
        served[0].load(Ordering::SeqCst) + served[1].load(Ordering::SeqCst) >= 160
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (a, b) = (
        served[0].load(Ordering::SeqCst) as f64,
        served[1].load(Ordering::SeqCst) as f64,
    );
    for t in tasks {
        t.await.unwrap();
    }
    let ratio = a / b;
    assert!((ratio - 3.0).abs() <= 0.3, "served {a}:{b} = {ratio}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_tenant_is_served_first() {
    let m = slow_mock("w", 50);
    // No headroom: the high-priority request must wait its turn in the
    // queue, and comes out first.
    let toml = format!(
        "{}{}",
        ONE_SLOT.replace("[policy]", "[policy]\npriority_headroom = 0"),
        two_tenants("priority = 0", "priority = 5")
    );
    let gw = Arc::new(gateway(&toml, &[m]).await);
    // The worker is busy with a long low-priority request; three more
    // low-priority requests queue, then a high-priority one.
    let order = finish_order(
        &gw,
        &[
            ("key-a", 4, "busy", 30),
            ("key-a", 1, "low1", 15),
            ("key-a", 1, "low2", 15),
            ("key-a", 1, "low3", 15),
            ("key-b", 1, "high", 0),
        ],
    )
    .await;
    assert_eq!(order[0], "busy", "{order:?}");
    assert_eq!(order[1], "high", "{order:?}");
}

/// Sends `(key, max_tokens, label, pause after)` in order, each in its own
/// task, and returns the labels in the order their responses ended.
async fn finish_order(
    gw: &Arc<Gateway>,
    sends: &[(&'static str, usize, &'static str, u64)],
) -> Vec<&'static str> {
    let finished = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for &(key, tokens, label, pause_ms) in sends {
        let (gw, finished) = (gw.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"prompt": "hello world", "max_tokens": {tokens}}}"#);
            let r = call(&gw, Some(key), &body).await;
            assert_eq!(r.status, 200, "{}", r.text());
            finished.lock().push(label);
        }));
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    finished.lock().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_headroom_lets_a_priority_tenant_past_a_full_worker() {
    let m = slow_mock("w", 50);
    // One slot per worker, one more for priority tenants (the default).
    let toml = format!("{ONE_SLOT}{}", two_tenants("priority = 0", "priority = 5"));
    let gw = Arc::new(gateway(&toml, &[m]).await);
    // A long low-priority request holds the worker's slot and another
    // waits; the high-priority one takes the headroom slot at once.
    let order = finish_order(
        &gw,
        &[
            ("key-a", 6, "busy", 30),
            ("key-a", 1, "low", 15),
            ("key-b", 1, "high", 0),
        ],
    )
    .await;
    assert_eq!(order[0], "high", "{order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gives_fast_429s_with_a_bounded_queue() {
    let m = mock("w");
    // Held busy: no slot frees until the refusals are in, so each one
    // was given at once, not after a wait for a slot.
    m.hold(true);
    let toml = format!(
        "[policy]\nmax_in_flight_per_worker = 1\nqueue_per_tenant = 2\nqueue_total = 3\n{}",
        two_tenants("", "")
    );
    let gw = Arc::new(gateway(&toml, std::slice::from_ref(&m)).await);
    let body = r#"{"prompt": "hello", "max_tokens": 2}"#;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let gw = gw.clone();
            let key = if i % 3 == 0 { "key-b" } else { "key-a" };
            tokio::spawn(async move { call(&gw, Some(key), body).await })
        })
        .collect();
    // One running, three waiting (at most two of a tenant): eight refused.
    eventually("eight refusals", || {
        tasks.iter().filter(|t| t.is_finished()).count() >= 8
    })
    .await;
    let (mut waiting, mut refused) = (Vec::new(), 0);
    for t in tasks {
        if !t.is_finished() {
            waiting.push(t);
            continue;
        }
        let r = t.await.unwrap();
        assert_eq!(r.status, 429, "{}", r.text());
        refused += 1;
        assert_eq!(r.json()["error"]["code"], "queue_full");
        assert_eq!(r.headers["retry-after"], "1");
    }
    assert_eq!((waiting.len(), refused), (4, 8));
    m.hold(false);
    for t in waiting {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_deadline_refuses_quickly_never_hangs() {
    let m = mock("w");
    m.hold(true);
    let toml = format!(
        "[policy]\nmax_in_flight_per_worker = 1\nqueue_deadline_ms = 150\n{}",
        two_tenants("", "")
    );
    let gw = Arc::new(gateway(&toml, std::slice::from_ref(&m)).await);
    let busy = {
        let gw = gw.clone();
        tokio::spawn(async move {
            call(&gw, Some("key-a"), r#"{"prompt": "x", "max_tokens": 4}"#).await
        })
    };
    eventually("the busy request at the worker", || m.submitted() == 1).await;
    let r = call(&gw, Some("key-b"), SMALL).await;
    assert_eq!(r.error(429)["error"]["code"], "queue_timeout");
    assert!(r.headers.contains_key("retry-after"));
    // Refused at its deadline while the slot was still taken, not when it
    // freed.
    assert!(!busy.is_finished(), "the slot was still held");
    m.hold(false);
    assert_eq!(busy.await.unwrap().status, 200);
}

fn ids(n: usize, base: u32) -> String {
    let v: Vec<String> = (0..n as u32)
        .map(|i| (base + i % 200).to_string())
        .collect();
    format!("[{}]", v.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_groups_never_share_cached_prompts() {
    let m = mock("w");
    let toml = format!(
        "{}[[tenants]]\nname = \"c\"\napi_key_sha256 = [\"{KEY_C}\"]\ncache_group = \"a\"\n",
        two_tenants("", "")
    );
    let gw = gateway(&toml, std::slice::from_ref(&m)).await;
    let body = format!(r#"{{"prompt": {}, "max_tokens": 1}}"#, ids(40, 10));
    let class = |r: &Reply| {
        assert_eq!(r.status, 200, "{}", r.text());
        let u = &r.json()["usage"];
        (
            u["cake"]["class"].as_str().unwrap().to_string(),
            u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        )
    };
    assert_eq!(class(&call(&gw, Some("key-a"), &body).await).0, "fresh");
    assert_eq!(m.last_request().unwrap().cache_group, "a");
    let (c, n) = class(&call(&gw, Some("key-a"), &body).await);
    assert_eq!((c.as_str(), n), ("cached", 32));
    // Tenant b, in its own group, never hits a's prompt.
    for _ in 0..2 {
        let (c, n) = class(&call(&gw, Some("key-b"), &body).await);
        assert_eq!(m.last_request().unwrap().cache_group, "b");
        if c == "cached" {
            // Its own second request may hit its own first.
            assert_eq!(n, 32);
        }
    }
    let fresh_body = format!(r#"{{"prompt": {}, "max_tokens": 1}}"#, ids(40, 300));
    assert_eq!(
        class(&call(&gw, Some("key-a"), &fresh_body).await).0,
        "fresh"
    );
    let (c, n) = class(&call(&gw, Some("key-b"), &fresh_body).await);
    assert_eq!((c.as_str(), n), ("fresh", 0), "b hit a's prompt");
    // Tenant c shares a's group, and its cache.
    let (c, _) = class(&call(&gw, Some("key-c"), &fresh_body).await);
    assert_eq!(c, "cached");
    assert_eq!(m.last_request().unwrap().cache_group, "a");
}

fn fake_load(compute_tokens: u64, io_bytes: u64) -> LoadReport {
    LoadReport {
        queued_compute_tokens: compute_tokens,
        queued_io_bytes: io_bytes,
        compute_a_s: 0.04,
        compute_b_s: 0.001,
        bandwidth_bytes_per_s: 1e9,
        kv_bytes_per_token: 1_600_000,
        chunk_tokens: 16,
        ..LoadReport::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_sends_cached_requests_to_idle_io_and_fresh_to_idle_compute() {
    let opts = MockOptions::default();
    // Compute busy for 2 s, I/O idle; compute idle, I/O busy for 5 s.
    let busy_compute = MockWorker::new("busy-compute", opts.clone());
    busy_compute.set_load(Some(fake_load(800, 0)));
    let busy_io = MockWorker::new("busy-io", opts);
    busy_io.set_load(Some(fake_load(0, 5_000_000_000)));
    let gw = gateway(
        "[policy]\nplacement = \"adaptive\"\n",
        &[busy_compute.clone(), busy_io.clone()],
    )
    .await;
    eventually("load reports", || {
        gw.pool()
            .slots()
            .iter()
            .all(|s| s.last_load().chunk_tokens == 16)
    })
    .await;
    let cached: Vec<u32> = (0..960).map(|i| 10 + i % 200).collect();
    for m in [&busy_compute, &busy_io] {
        m.store_prompt(&cached, "default");
    }
    let worker = |r: &Reply| {
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["usage"]["cake"]["worker"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let body = format!(r#"{{"prompt": {}, "max_tokens": 1}}"#, ids(960, 10));
    let r = call(&gw, None, &body).await;
    assert_eq!(r.json()["usage"]["cake"]["class"], "cached");
    assert_eq!(worker(&r), "busy-compute");
    let body = format!(r#"{{"prompt": {}, "max_tokens": 1}}"#, ids(900, 300));
    assert_eq!(worker(&call(&gw, None, &body).await), "busy-io");
}

/// A gateway started from the config file at `path`, watching it (every
/// 50 ms) for changes, with one worker.
async fn watched_gateway(path: &std::path::Path, worker: MockWorker) -> Gateway {
    let cfg = Config::load(path).unwrap();
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    let mut gw = Gateway::start_with_tenants(
        &server_config(),
        &cfg.policy,
        &cfg.tenants,
        model(),
        vec![slot(Arc::new(worker))],
        l,
    )
    .unwrap();
    gw.watch_config(path.to_path_buf(), Duration::from_millis(50));
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_reload_from_the_file_and_a_bad_file_keeps_the_old_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cake.toml");
    let one = format!("[[tenants]]\nname = \"a\"\napi_key_sha256 = [\"{KEY_A}\"]\n");
    std::fs::write(&path, &one).unwrap();
    let gw = watched_gateway(&path, mock("w")).await;
    assert_eq!(call(&gw, Some("key-a"), SMALL).await.status, 200);
    call(&gw, Some("key-b"), SMALL).await.error(401);

    // Add tenant b: its key works without a restart.
    std::fs::write(&path, two_tenants("", "")).unwrap();
    let mut ok = false;
    for _ in 0..250 {
        if call(&gw, Some("key-b"), SMALL).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "tenant b not loaded");

    // A broken file keeps the config in force.
    let errors = || {
        cake_gateway::render_metrics()
            .lines()
            .find(|l| l.starts_with("cake_config_reload_errors_total"))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = errors();
    std::fs::write(&path, "[[tenants]]\nname = \"a\"\nweight = 0\n").unwrap();
    eventually("reload error counted", || errors() > before).await;
    assert_eq!(call(&gw, Some("key-b"), SMALL).await.status, 200);
    assert_eq!(call(&gw, Some("key-a"), SMALL).await.status, 200);
    std::fs::write(&path, "not toml [[").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(call(&gw, Some("key-b"), SMALL).await.status, 200);
}

/// Queue bounds reload without a restart: with `queue_per_tenant` cut from
/// 16 to 1 in the file, a burst of four from one tenant behind a busy worker
/// gets one slot, one place in the queue and two fast 429 `queue_full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bounds_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cake.toml");
    let policy = |per_tenant: usize| {
        format!(
            "[policy]\nmax_in_flight_per_worker = 1\nqueue_per_tenant = {per_tenant}\n{}",
            two_tenants("", "")
        )
    };
    std::fs::write(&path, policy(16)).unwrap();
    let gw = watched_gateway(&path, slow_mock("w", 100)).await;
    std::fs::write(&path, policy(1)).unwrap();
    // The file is polled every 50 ms (other tests reload too, so the
    // reload counter cannot tell this one apart).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let gw = Arc::new(gw);
    let body = r#"{"prompt": "hello", "max_tokens": 2}"#;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(
            async move { call(&gw, Some("key-a"), body).await },
        ));
        // In order: the first takes the slot, the second waits.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut codes = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 429 {
            assert_eq!(r.json()["error"]["code"], "queue_full");
        }
        codes.push(r.status.as_u16());
    }
    codes.sort_unstable();
    assert_eq!(codes, vec![200, 200, 429, 429]);
}

/// A request whose predicted wait (the work queued ahead of it at the
/// measured slot turnover) is past its queue deadline is refused at once,
/// without an SLO, and told to come back when the backlog will have
/// drained: a `Retry-After` from the prediction, not a constant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predicted_wait_past_the_deadline_is_refused_at_once() {
    // Each token takes at least 100 ms: a slot is held at least 1 s for
    // 10 tokens, whatever the machine's speed (slower only adds to it).
    let m = slow_mock("w", 100);
    let toml = format!(
        "[policy]\nmax_in_flight_per_worker = 1\nqueue_deadline_ms = 3000\n{}",
        two_tenants("", "")
    );
    let gw = Arc::new(gateway(&toml, std::slice::from_ref(&m)).await);
    // Measured: 2 prompt tokens per >= 1 s of slot.
    let r = call(
        &gw,
        Some("key-a"),
        r#"{"prompt": [1, 2], "max_tokens": 10}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The only slot, taken for good.
    let busy = {
        let gw = gw.clone();
        tokio::spawn(async move {
            call(
                &gw,
                Some("key-a"),
                r#"{"prompt": [1, 2], "max_tokens": 1000}"#,
            )
            .await
        })
    };
    eventually("the slot is taken", || m.submitted() == 2).await;
    // 300 tokens at <= 2 per second: >= 150 s, far past the 3 s deadline.
    let ids: Vec<u32> = (0..300).map(|i| i % 200).collect();
    let body = serde_json::json!({"prompt": ids, "max_tokens": 1}).to_string();
    let r = call(&gw, Some("key-b"), &body).await;
    let v = r.error(429);
    assert_eq!(v["error"]["code"], "queue_timeout", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("predicted wait"),
        "refused on the prediction, not at the deadline: {v}"
    );
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 100, "Retry-After {secs}: the backlog's drain time");
    // A request that fits still queues (and is served once the slot frees).
    assert_eq!(m.submitted(), 2);
    busy.abort();
}
