//! Every error of DESIGN.md section 6 over real HTTP: the right status, an
//! OpenAI error body naming what is wrong, and a server that goes on.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn malformed_json_is_400() {
    let gw = start_with(&mock("w0")).await;
    for body in ["{", "not json", "[1, 2]", ""] {
        let r = post(gw.local_addr(), "/v1/completions", body).await;
        let v = r.error(400);
        assert_eq!(v["error"]["code"], "invalid_json", "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn wrong_field_types_are_400_naming_the_field() {
    let gw = start_with(&mock("w0")).await;
    for (path, body, field) in [
        (
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": "5"}"#,
            "max_tokens",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "temperature": -1}"#,
            "temperature",
        ),
        ("/v1/completions", r#"{"prompt": {"a": 1}}"#, "prompt"),
        ("/v1/completions", r#"{"prompt": "x", "n": 3}"#, "n"),
        (
            "/v1/completions",
            r#"{"prompt": "x", "stream": 1}"#,
            "stream",
        ),
        ("/v1/completions", r#"{"prompt": [1, 99999]}"#, "prompt"),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user"}], "top_p": "all"}"#,
            "top_p",
        ),
        ("/v1/chat/completions", r#"{"messages": 5}"#, "messages"),
    ] {
        let r = post(gw.local_addr(), path, body).await;
        let v = r.error(400);
        assert_eq!(v["error"]["param"], field, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
    // Unknown fields are ignored, not refused.
    let r = post(
        gw.local_addr(),
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 1, "guided_json": {}, "priority": 3}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn unknown_model_is_404_and_unknown_route_too() {
    let gw = start_with(&mock("w0")).await;
    let r = post(
        gw.local_addr(),
        "/v1/completions",
        r#"{"model": "gpt-9", "prompt": "x"}"#,
    )
    .await;
    let v = r.error(404);
    assert_eq!(v["error"]["code"], "model_not_found");
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
    let r = get(gw.local_addr(), "/v1/nothing").await;
    r.error(404);
    let r = get(gw.local_addr(), "/v1/completions").await;
    r.error(404);
}

#[tokio::test]
async fn prompt_too_long_is_413_and_too_much_output_is_400() {
    let gw = start_with(&mock("w0")).await;
    let long: Vec<u32> = (0..CONTEXT as u32 + 1).map(|i| i % 200).collect();
    let body = serde_json::json!({"prompt": long, "max_tokens": 1}).to_string();
    let v = post(gw.local_addr(), "/v1/completions", &body)
        .await
        .error(413);
    assert_eq!(v["error"]["code"], "prompt_too_long");
    // A configured limit below the context.
    let m = mock("w0");
    let mut cfg = server_config();
    cfg.max_prompt_tokens = 10;
    let gw2 = start(vec![slot(Arc::new(m.clone()))], cfg).await;
    let body = serde_json::json!({"prompt": "word ".repeat(50), "max_tokens": 1}).to_string();
    post(gw2.local_addr(), "/v1/completions", &body)
        .await
        .error(413);
    assert_eq!(m.submitted(), 0);
    // Fits, but not with the output asked for.
    let body = serde_json::json!({"prompt": [1, 2, 3], "max_tokens": CONTEXT}).to_string();
    let v = post(gw.local_addr(), "/v1/completions", &body)
        .await
        .error(400);
    assert_eq!(v["error"]["param"], "max_tokens");
}

#[tokio::test]
async fn body_too_large_is_413() {
    let m = mock("w0");
    let mut cfg = server_config();
    cfg.max_body_bytes = 4096;
    let gw = start(vec![slot(Arc::new(m.clone()))], cfg).await;
    let body = serde_json::json!({"prompt": "x".repeat(10_000)}).to_string();
    let v = post(gw.local_addr(), "/v1/completions", &body)
        .await
        .error(413);
    assert_eq!(v["error"]["code"], "body_too_large");

    // Chunked, so no Content-Length to refuse early: the limit still holds.
    let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
    let chunk = "x".repeat(3000);
    let mut req = String::from(
        "POST /v1/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    for _ in 0..3 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server must answer and close")
        .ok();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert_eq!(m.submitted(), 0);
    // Still serving.
    assert_eq!(
        post(
            gw.local_addr(),
            "/v1/completions",
            r#"{"prompt":"x","max_tokens":1}"#
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn no_healthy_worker_is_503() {
    let m = mock("w0");
    let gw = start_with(&m).await;
    m.set_healthy(false);
    // Before the health check notices, the refused request is still 503.
    let v = post(gw.local_addr(), "/v1/completions", r#"{"prompt": "x"}"#)
        .await
        .error(503);
    assert_eq!(v["error"]["code"], "no_healthy_worker");
    eventually("worker marked down", || gw.pool().healthy() == 0).await;
    let r = post(gw.local_addr(), "/v1/completions", r#"{"prompt": "x"}"#).await;
    r.error(503);
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(get(gw.local_addr(), "/health").await.status, 503);
    // Back when it answers again.
    m.set_healthy(true);
    eventually("worker back up", || gw.pool().healthy() == 1).await;
    assert_eq!(
        post(
            gw.local_addr(),
            "/v1/completions",
            r#"{"prompt":"x","max_tokens":1}"#
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn client_gone_mid_stream_cancels_the_work() {
    let m = slow_mock("w0", 20);
    let gw = start_with(&m).await;
    let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
    let body = r#"{"prompt": "x", "max_tokens": 1000, "stream": true}"#;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Read until a few tokens have come, then hang up.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(6).filter(|w| w == b"data: ").count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    eventually("the worker sees the cancellation", || m.cancelled() == 1).await;
    assert_eq!(m.finished(), 0);
    eventually("in-flight ledger back to 0", || gw.in_flight(0) == 0).await;
    // The server survives and serves the next request.
    let r = post(
        gw.local_addr(),
        "/v1/completions",
        r#"{"prompt":"x","max_tokens":2}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let metrics = get(gw.local_addr(), "/metrics").await.text();
    assert!(
        metrics.contains("cake_gateway_cancelled_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn client_gone_before_the_first_token_cancels_too() {
    // A long wait before the first token (a long prefill): the stream
    // task notices the hang-up while the worker is silent.
    let m = slow_mock("w0", 300);
    let gw = start_with(&m).await;
    let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
    let body = r#"{"prompt": "x", "max_tokens": 5}"#;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    eventually("submitted", || m.submitted() == 1).await;
    drop(s);
    eventually("the worker sees the cancellation", || m.cancelled() == 1).await;
}

#[tokio::test]
async fn stalled_client_is_disconnected() {
    let mut cfg = server_config();
    cfg.read_timeout_ms = 200;
    let gw = start(vec![slot(Arc::new(mock("w0")))], cfg).await;
    let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
    // Headers promise a body that never comes.
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("a stalled body must not hold the connection")
        .ok();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

/// A fault inside a worker (a broken invariant, a failed step) is the
/// server's fault: 500 `internal_error`, never a 400, streaming or not.
#[tokio::test]
async fn a_fault_inside_the_worker_is_500() {
    let m = mock("w0");
    m.fail_with(Some(cake_engine::worker::WorkErrorKind::Internal));
    let gw = start_with(&m).await;
    for stream in [false, true] {
        let body = serde_json::json!({"prompt": "x", "max_tokens": 2, "stream": stream});
        let r = post(gw.local_addr(), "/v1/completions", &body.to_string()).await;
        let v = r.error(500);
        assert_eq!(v["error"]["code"], "internal_error", "{v}");
        assert_eq!(v["error"]["type"], "internal_error");
    }
    // A request the worker refuses as wrong is still the client's: 400.
    m.fail_with(Some(cake_engine::worker::WorkErrorKind::BadRequest));
    let r = post(gw.local_addr(), "/v1/completions", r#"{"prompt": "x"}"#).await;
    r.error(400);
}

/// Every worker full: 503 `workers_overloaded` with a `Retry-After`; one
/// with room takes the request instead.
#[tokio::test]
async fn full_workers_are_retried_then_503_with_retry_after() {
    use cake_engine::worker::WorkErrorKind;
    let (a, b) = (mock("a"), mock("b"));
    a.fail_with(Some(WorkErrorKind::Overloaded));
    let gw = start(
        vec![slot(Arc::new(a.clone())), slot(Arc::new(b.clone()))],
        server_config(),
    )
    .await;
    for _ in 0..3 {
        let r = post(
            gw.local_addr(),
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": 1}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["usage"]["cake"]["worker"], "b");
    }
    b.fail_with(Some(WorkErrorKind::Overloaded));
    let r = post(gw.local_addr(), "/v1/completions", r#"{"prompt": "x"}"#).await;
    let v = r.error(503);
    assert_eq!(v["error"]["code"], "workers_overloaded", "{v}");
    assert!(r.headers.contains_key("retry-after"));
    // Full is not down.
    assert!(gw.pool().slots().iter().all(|s| s.is_up()));
}
