//! Shared fixtures: a gateway on 127.0.0.1 in front of mock workers, and a
//! small HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cake_gateway::config::{PolicyConfig, ServerConfig};
use cake_gateway::worker::{MockOptions, MockWorker, Worker, WorkerSlot};
use cake_gateway::{Gateway, ModelInfo};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const MODEL: &str = "tiny";
pub const CONTEXT: usize = 1024;

pub fn model() -> ModelInfo {
    cake_gateway::bench::synthetic_model(MODEL, 512, CONTEXT).unwrap()
}

pub fn mock(name: &str) -> MockWorker {
    MockWorker::new(name, MockOptions::default())
}

pub fn slow_mock(name: &str, delay_ms: u64) -> MockWorker {
    MockWorker::new(
        name,
        MockOptions {
            token_delay: Duration::from_millis(delay_ms),
            ..MockOptions::default()
        },
    )
}

pub fn slot(w: Arc<dyn Worker>) -> WorkerSlot {
    WorkerSlot::new(w, Duration::from_secs(2), Duration::from_secs(5))
}

pub fn server_config() -> ServerConfig {
    ServerConfig {
        health_interval_ms: 50,
        down_after_failures: 2,
        read_timeout_ms: 2_000,
        ..ServerConfig::default()
    }
}

pub async fn start(slots: Vec<WorkerSlot>, server: ServerConfig) -> Gateway {
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    Gateway::start(&server, &PolicyConfig::default(), model(), slots, l).unwrap()
}

/// A gateway in front of one mock worker.
pub async fn start_with(m: &MockWorker) -> Gateway {
    start(vec![slot(Arc::new(m.clone()))], server_config()).await
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        let t = self.text();
        assert!(t.ends_with("\n\n"), "events end with a blank line: {t:?}");
        t.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not an SSE data line: {e:?}"))
                    .to_string()
            })
            .collect()
    }

    /// Asserts an OpenAI error body and returns it.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let v = self.json();
        let e = &v["error"];
        assert!(
            e["message"].is_string() && e["type"].is_string() && e["code"].is_string(),
            "{v}"
        );
        v
    }
}

/// How long a test waits for an answer before calling it a hang: far past
/// any real answer (a debug-built real model decoding on a loaded 2-core
/// machine takes tens of seconds), so it never judges speed.
const HANG_GUARD: Duration = Duration::from_secs(180);

pub async fn request(addr: SocketAddr, method: Method, path: &str, body: &str) -> Reply {
    request_as(addr, method, path, body, None).await
}

/// [`request`] with `Authorization: Bearer key` when `key` is given.
pub async fn request_as(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(HANG_GUARD, client().request(req))
        .await
        .expect("no answer within the hang guard")
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(HANG_GUARD, resp.into_body().collect())
        .await
        .expect("body not finished within the hang guard")
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// SHA-256 of the test keys "key-a", "key-b", "key-c".
pub const KEY_A: &str = "f10f781241e2246678b6b45c857069208152a53863e47fac33f607ab405006f4";
pub const KEY_B: &str = "a30534a53b23547377ddccbd1ac85a8a84c13db43493c16e55a6abc7b0eba634";
pub const KEY_C: &str = "49043acf9056472a214242c2d15f3087c2d024b0d39ee858c60712b2354f3926";

/// A gateway with `cfg`'s policy and tenants in front of `workers`.
pub async fn tenant_gateway(cfg: &cake_gateway::Config, workers: &[MockWorker]) -> Gateway {
    let slots = workers.iter().map(|w| slot(Arc::new(w.clone()))).collect();
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    Gateway::start_with_tenants(
        &server_config(),
        &cfg.policy,
        &cfg.tenants,
        model(),
        slots,
        l,
    )
    .unwrap()
}

/// `POST /v1/completions` with `body`, as the tenant of `key`.
pub async fn complete_as(gw: &Gateway, key: Option<&str>, body: &str) -> Reply {
    request_as(gw.local_addr(), Method::POST, "/v1/completions", body, key).await
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    request(addr, Method::POST, path, body).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, Method::GET, path, "").await
}

/// Polls `f` until it holds: a hang guard (60 s), not a timing assertion.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The config of a gateway over the `tiny` model written into `dir`, as
/// `cake serve` runs it (an embedded engine, 16-token chunks, no disk
/// tier), and the model's folder; `engine`: more `[engine]` keys; `extra`:
/// more sections.
pub fn tiny_config(
    dir: &std::path::Path,
    engine: &str,
    extra: &str,
) -> (cake_gateway::Config, std::path::PathBuf) {
    use cake_engine::init::{Dtype, preset, write_checkpoint};
    let model = dir.join("model");
    write_checkpoint(&preset("tiny").unwrap(), 1, Dtype::F32, &model).unwrap();
    let text = format!(
        r#"
        [server]
        data_dir = "{data}"
        [model]
        path = "{model}"
        [engine]
        token_budget = 64
        {engine}
        [kv]
        chunk_tokens = 16
        [kv.disk]
        enabled = false
        {extra}
        "#,
        data = dir.display(),
        model = model.display()
    );
    let cfg = cake_gateway::Config::parse(&text).unwrap();
    cfg.validate().unwrap();
    (cfg, model)
}

/// A gateway over [`tiny_config`].
pub async fn tiny_gateway(dir: &std::path::Path, engine: &str, extra: &str) -> Gateway {
    let (cfg, model) = tiny_config(dir, engine, extra);
    let info = cake_gateway::model_info(&cfg, &model).unwrap();
    let slots = cake_gateway::build_workers(&cfg, &model).unwrap();
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    Gateway::start(&cfg.server, &cfg.policy, info, slots, l).unwrap()
}
