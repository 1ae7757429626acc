//! Remote workers: `cake worker`'s HTTP protocol, retries on another
//! worker, down and back up, cancellation across the hop, and an
//! OpenAI-compatible server as a worker.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use cake_gateway::config::{PolicyConfig, WorkerKind};
use cake_gateway::worker::{
    CakeWorker, MockWorker, OpenAiWorker, Worker, WorkerSlot, serve_worker,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn worker_server(m: &MockWorker) -> cake_gateway::ServerHandle {
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    serve_worker(
        l,
        Arc::new(m.clone()) as Arc<dyn Worker>,
        Duration::from_secs(5),
    )
    .unwrap()
}

fn remote(name: &str, url: &str) -> WorkerSlot {
    slot(Arc::new(CakeWorker::new(name, url, Duration::from_secs(2))))
}

/// A port nothing listens on.
async fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[tokio::test]
async fn gateway_to_cake_worker_over_http() {
    let m = mock("remote-0");
    let ws = worker_server(&m).await;
    let gw = start(
        vec![remote("r0", &format!("http://{}", ws.local_addr()))],
        server_config(),
    )
    .await;
    let a = gw.local_addr();
    let r = post(
        a,
        "/v1/completions",
        r#"{"prompt": "hello", "max_tokens": 3}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["text"], "abc");
    assert_eq!(v["usage"]["cake"]["worker"], "remote-0");
    // Streaming across the hop.
    let r = post(
        a,
        "/v1/completions",
        r#"{"prompt": "hello", "max_tokens": 3, "stream": true}"#,
    )
    .await;
    let ev = r.events();
    assert_eq!(ev.last().unwrap(), "[DONE]");
    // Classification goes through the worker's classify endpoint.
    let prompt: Vec<u32> = (0..20).collect();
    let body = serde_json::json!({"prompt": prompt, "max_tokens": 1}).to_string();
    post(a, "/v1/completions", &body).await;
    let v = post(a, "/v1/completions", &body).await.json();
    assert_eq!(v["usage"]["cake"]["class"], "cached");
    // Worker-side errors keep their meaning: the mock refuses an empty
    // prompt as a bad request (the gateway never sends one; call directly).
    let w = CakeWorker::new(
        "r",
        &format!("http://{}", ws.local_addr()),
        Duration::from_secs(2),
    );
    assert!(w.health().await.is_ok());
    let load = w.load().await.unwrap();
    assert_eq!(load.worker, "remote-0");
}

#[tokio::test]
async fn retries_on_another_worker_and_marks_the_dead_one_down() {
    let m = mock("alive");
    let ws = worker_server(&m).await;
    let dead = dead_url().await;
    let mut cfg = server_config();
    cfg.health_interval_ms = 60_000; // only requests count here
    cfg.down_after_failures = 2;
    let slots = vec![
        remote("dead", &dead),
        remote("alive", &format!("http://{}", ws.local_addr())),
    ];
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    let policy = PolicyConfig {
        placement: cake_gateway::config::PlacementPolicy::RoundRobin,
        ..PolicyConfig::default()
    };
    let gw = cake_gateway::Gateway::start(&cfg, &policy, model(), slots, l).unwrap();
    for _ in 0..4 {
        let r = post(
            gw.local_addr(),
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": 1}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["usage"]["cake"]["worker"], "alive");
    }
    assert_eq!(m.submitted(), 4);
    let dead_slot = &gw.pool().slots()[0];
    assert!(!dead_slot.is_up(), "two failures mark it down");
    let metrics = get(gw.local_addr(), "/metrics").await.text();
    // Its failures come from requests and from classify lookups (which
    // also go to the first healthy worker), whichever reached it first.
    assert!(
        metrics.contains("cake_worker_failures_total{worker=\"dead\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cake_worker_up{worker=\"dead\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_worker_comes_back_when_it_answers() {
    // Bind a port, start the gateway pointing at it with nothing serving,
    // then serve there.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let gw = start(
        vec![remote("late", &format!("http://{addr}"))],
        server_config(),
    )
    .await;
    eventually("marked down", || gw.pool().healthy() == 0).await;
    post(gw.local_addr(), "/v1/completions", r#"{"prompt": "x"}"#)
        .await
        .error(503);
    let m = mock("late");
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _ws = serve_worker(
        l,
        Arc::new(m.clone()) as Arc<dyn Worker>,
        Duration::from_secs(5),
    )
    .unwrap();
    eventually("back up", || gw.pool().healthy() == 1).await;
    let r = post(
        gw.local_addr(),
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 1}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn client_gone_cancels_work_on_a_remote_worker() {
    let m = slow_mock("remote-0", 20);
    let ws = worker_server(&m).await;
    let gw = start(
        vec![remote("r0", &format!("http://{}", ws.local_addr()))],
        server_config(),
    )
    .await;
    let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
    let body = r#"{"prompt": "x", "max_tokens": 1000, "stream": true}"#;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = 0;
    while seen < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        seen += buf[..n].windows(6).filter(|w| w == b"data: ").count();
    }
    drop(s);
    eventually("the remote worker sees the cancellation", || {
        m.cancelled() == 1
    })
    .await;
    assert_eq!(m.finished(), 0);
}

#[tokio::test]
async fn an_openai_server_as_a_worker() {
    // Upstream: another gateway (OpenAI-compatible) in front of a mock.
    let m = mock("upstream-mock");
    let upstream = start_with(&m).await;
    let w = OpenAiWorker::new(
        "vllm-0",
        &format!("http://{}", upstream.local_addr()),
        "tiny",
        "",
        Duration::from_secs(2),
    );
    assert_eq!(w.kind(), WorkerKind::Openai);
    let gw = start(vec![slot(Arc::new(w))], server_config()).await;
    let a = gw.local_addr();
    let r = post(
        a,
        "/v1/completions",
        r#"{"prompt": "hello", "max_tokens": 4, "seed": 3}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["text"], "abcd");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["cake"]["worker"], "vllm-0");
    // The upstream got token ids and the options.
    let sent = m.last_request().unwrap();
    assert_eq!(sent.options.max_tokens, 4);
    assert_eq!(sent.options.seed, Some(3));
    // Streaming chat through it.
    let r = post(
        a,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": true}"#,
    )
    .await;
    let ev = r.events();
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let content: String = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "ab");
    // Its load is the gateway's own ledger: nothing in flight now.
    assert_eq!(gw.in_flight(0), 0);
}

/// Over `cake worker`'s HTTP, errors keep their kind: a fault inside the
/// worker is 500, a full worker is tried no further and said as 503 with
/// `Retry-After`, as with an embedded worker.
#[tokio::test]
async fn remote_errors_map_as_embedded_ones_do() {
    use cake_engine::worker::WorkErrorKind;
    let m = mock("remote-0");
    let ws = worker_server(&m).await;
    let gw = start(
        vec![remote("r0", &format!("http://{}", ws.local_addr()))],
        server_config(),
    )
    .await;
    let a = gw.local_addr();
    m.fail_with(Some(WorkErrorKind::Internal));
    for stream in [false, true] {
        let body = serde_json::json!({"prompt": "x", "max_tokens": 2, "stream": stream});
        let v = post(a, "/v1/completions", &body.to_string())
            .await
            .error(500);
        assert_eq!(v["error"]["code"], "internal_error", "{v}");
    }
    m.fail_with(Some(WorkErrorKind::Overloaded));
    let r = post(a, "/v1/completions", r#"{"prompt": "x"}"#).await;
    assert_eq!(r.error(503)["error"]["code"], "workers_overloaded");
    assert!(r.headers.contains_key("retry-after"));
    m.fail_with(None);
    let r = post(a, "/v1/completions", r#"{"prompt": "x", "max_tokens": 1}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
