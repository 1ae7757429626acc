//! Graceful shutdown over real HTTP: streams in flight when the drain
//! starts end with all their tokens and `[DONE]`; at the drain deadline
//! what is left ends with an error a client can read; new connections
//! are refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Reply, client, server_config, slot, slow_mock, start};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Sends `body` and returns once the response head has arrived (the
/// request is then in flight at the gateway), with a task reading the
/// rest.
async fn begin(addr: SocketAddr, body: &str) -> tokio::task::JoinHandle<Reply> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("no response head within 20 s")
        .unwrap();
    tokio::spawn(async move {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
            .await
            .expect("body not finished within 20 s")
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    })
}

fn text_of(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect()
}

async fn refused(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_flight_finish_then_new_connections_are_refused() {
    let m = slow_mock("w0", 40);
    let gw = start(vec![slot(Arc::new(m.clone()))], server_config()).await;
    let addr = gw.local_addr();
    let body = r#"{"prompt": "x", "max_tokens": 8, "stream": true}"#;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(begin(addr, body).await);
    }
    let report = gw.drain(Duration::from_secs(30)).await;
    assert_eq!(report.cut_connections, 0, "{report:?}");
    for s in streams {
        let r = s.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let ev = r.events();
        assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{ev:?}");
        assert_eq!(text_of(&ev), "abcdefgh", "every token arrived: {ev:?}");
        assert!(!r.text().contains("\"error\""), "{}", r.text());
    }
    assert_eq!(m.finished(), 3);
    assert!(
        refused(addr).await,
        "a new connection after the drain is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_ends_streams_with_an_error_event_and_requests_with_503() {
    // 1000 tokens at 200 ms each: nothing finishes within the drain.
    let m = slow_mock("w0", 200);
    let gw = start(vec![slot(Arc::new(m.clone()))], server_config()).await;
    let addr = gw.local_addr();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let body = r#"{"prompt": "x", "max_tokens": 1000, "stream": true}"#;
        streams.push(begin(addr, body).await);
    }
    // A non-streaming request waits for its whole answer: its head comes
    // only with the cut.
    let whole = tokio::spawn(crate::common::post(
        addr,
        "/v1/completions",
        r#"{"prompt": "y", "max_tokens": 1000}"#,
    ));
    crate::common::eventually("the non-streaming request reaches the worker", || {
        m.submitted() == 4
    })
    .await;

    let report = gw.drain(Duration::from_millis(300)).await;
    assert_eq!(report.cut_connections, 4, "{report:?}");
    assert_eq!(report.left_open, 0, "{report:?}");
    for s in streams {
        let r = s.await.unwrap();
        assert_eq!(r.status, 200);
        let ev = r.events();
        let n = ev.len();
        assert!(n >= 2, "{ev:?}");
        assert_eq!(ev[n - 1], "[DONE]");
        let err: Value = serde_json::from_str(&ev[n - 2]).unwrap();
        assert_eq!(err["error"]["code"], "shutting_down", "{err}");
        assert_eq!(err["error"]["type"], "service_unavailable", "{err}");
    }
    let r = whole.await.unwrap();
    let e = r.error(503);
    assert_eq!(e["error"]["code"], "shutting_down", "{e}");
    crate::common::eventually("the cut requests are cancelled at the worker", || {
        m.cancelled() == 4
    })
    .await;
    assert!(refused(addr).await);
}

/// `cake worker` drains the same way: its streams cut at the deadline end
/// with an error the gateway passes on, then `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_cake_worker_ends_its_streams_with_an_error_event() {
    use cake_gateway::worker::{CakeWorker, Worker, serve_worker};
    let m = slow_mock("remote-0", 200);
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    let ws = serve_worker(
        l,
        Arc::new(m.clone()) as Arc<dyn Worker>,
        Duration::from_secs(5),
    )
    .unwrap();
    let url = format!("http://{}", ws.local_addr());
    let gw = start(
        vec![slot(Arc::new(CakeWorker::new(
            "r0",
            &url,
            Duration::from_secs(2),
        )))],
        server_config(),
    )
    .await;
    let s = begin(
        gw.local_addr(),
        r#"{"prompt": "x", "max_tokens": 1000, "stream": true}"#,
    )
    .await;
    let report = ws.drain(Duration::from_millis(300)).await;
    // The stream's connection (a health check may be on another).
    assert!(report.cut_connections >= 1, "{report:?}");
    let r = s.await.unwrap();
    let ev = r.events();
    let n = ev.len();
    assert_eq!(ev[n - 1], "[DONE]", "{ev:?}");
    let err: Value = serde_json::from_str(&ev[n - 2]).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{err}"
    );
}
