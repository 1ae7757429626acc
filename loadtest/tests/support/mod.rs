//! A tiny in-process OpenAI-compatible mock on 127.0.0.1 for the tests:
//! streams a few tokens after a configurable delay, returns usage with a
//! `cake.class`, or fails with a chosen status — decided per API key.

// Test fixture: panicking on a broken mock is the right failure.
#![allow(dead_code, clippy::unwrap_used)]

use parking_lot::Mutex;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the mock does for one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Wait `ttft`, then stream `tokens` chunks `gap` apart, then usage.
    Stream {
        ttft: Duration,
        tokens: u32,
        gap: Duration,
        class: Option<&'static str>,
    },
    /// Answer with this status and an OpenAI error body.
    Status(u16),
    /// Wait `delay`, stream `text` in two chunks, then `usage` as given.
    Echo {
        delay: Duration,
        text: String,
        usage: serde_json::Value,
    },
}

/// Decides the reply from the API key and the request body.
pub type Behaviour = Arc<dyn Fn(&str, &serde_json::Value) -> Reply + Send + Sync>;

type Body = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// A running mock; the server stops when the test's runtime ends.
pub struct Mock {
    pub addr: SocketAddr,
    /// Every request body received, as JSON, with its API key.
    pub seen: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    /// When each request of `seen` arrived (same order).
    pub times: Arc<Mutex<Vec<std::time::Instant>>>,
}

type Seen = (
    Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    Arc<Mutex<Vec<std::time::Instant>>>,
);

impl Mock {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn once(status: StatusCode, ctype: &'static str, body: String) -> Response<Body> {
    let s: Pin<Box<dyn Stream<Item = _> + Send>> = Box::pin(futures::stream::once(async move {
        Ok(Frame::data(Bytes::from(body)))
    }));
    let mut r = Response::new(StreamBody::new(s));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

fn stream(reply: (Duration, u32, Duration, Option<&'static str>), chat: bool) -> Response<Body> {
    let (ttft, tokens, gap, class) = reply;
    let chunk = move |i: u32| -> String {
        if chat {
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" t{i}\"}}}}]}}\n\n"
            )
        } else {
            format!("data: {{\"choices\":[{{\"index\":0,\"text\":\" t{i}\"}}]}}\n\n")
        }
    };
    let usage = match class {
        Some(c) => format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":11,\"completion_tokens\":{tokens},\"cake\":{{\"class\":\"{c}\",\"loaded_tokens\":0}}}}}}\n\ndata: [DONE]\n\n"
        ),
        None => format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":11,\"completion_tokens\":{tokens}}}}}\n\ndata: [DONE]\n\n"
        ),
    };
    // State: index of the next piece; pieces are tokens then the tail.
    let s = futures::stream::unfold(0u32, move |i| {
        let usage = usage.clone();
        async move {
            if i > tokens {
                return None;
            }
            let piece = if i < tokens {
                tokio::time::sleep(if i == 0 { ttft } else { gap }).await;
                chunk(i)
            } else {
                usage
            };
            Some((Ok(Frame::data(Bytes::from(piece))), i + 1))
        }
    });
    let s: Pin<Box<dyn Stream<Item = _> + Send>> = Box::pin(s);
    let mut r = Response::new(StreamBody::new(s));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r
}

fn echo(delay: Duration, text: String, usage: serde_json::Value, chat: bool) -> Response<Body> {
    let piece = move |t: &str| -> String {
        let choice = if chat {
            serde_json::json!({"index": 0, "delta": {"content": t}})
        } else {
            serde_json::json!({"index": 0, "text": t})
        };
        format!("data: {}\n\n", serde_json::json!({"choices": [choice]}))
    };
    let half = text.len() / 2;
    let pieces = vec![
        piece(&text[..half]),
        piece(&text[half..]),
        format!(
            "data: {}\n\ndata: [DONE]\n\n",
            serde_json::json!({"choices": [], "usage": usage})
        ),
    ];
    let s = futures::stream::unfold(0usize, move |i| {
        let pieces = pieces.clone();
        async move {
            if i == 0 {
                tokio::time::sleep(delay).await;
            }
            let p = pieces.get(i)?.clone();
            Some((Ok(Frame::data(Bytes::from(p))), i + 1))
        }
    });
    let s: Pin<Box<dyn Stream<Item = _> + Send>> = Box::pin(s);
    let mut r = Response::new(StreamBody::new(s));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r
}

fn bad(msg: &str) -> Response<Body> {
    once(
        StatusCode::BAD_REQUEST,
        "application/json",
        serde_json::json!({"error": {"message": msg, "type": "invalid_request_error"}}).to_string(),
    )
}

async fn handle(
    behaviour: Behaviour,
    seen: Seen,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/v1/models" {
        return Ok(once(
            StatusCode::OK,
            "application/json",
            r#"{"object":"list","data":[{"id":"mock-model","object":"model"}]}"#.into(),
        ));
    }
    if path == "/health" {
        return Ok(once(StatusCode::OK, "text/plain", "ok".into()));
    }
    let chat = path == "/v1/chat/completions";
    if !chat && path != "/v1/completions" {
        return Ok(once(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found".into(),
        ));
    }
    let key = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let Ok(body) = req.into_body().collect().await else {
        return Ok(bad("unreadable body"));
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
        return Ok(bad("not json"));
    };
    // Only the standard fields the tool promises to send.
    let prompt_ok = if chat {
        json["messages"].is_array()
    } else {
        json["prompt"].is_string() || json["prompt"].is_array()
    };
    if !prompt_ok
        || !json["model"].is_string()
        || !json["max_tokens"].is_u64()
        || json["stream"] != true
        || json["stream_options"]["include_usage"] != true
    {
        return Ok(bad("missing standard fields"));
    }
    let reply = behaviour(&key, &json);
    {
        let mut s = seen.0.lock();
        seen.1.lock().push(std::time::Instant::now());
        s.push((key.clone(), json));
    }
    Ok(match reply {
        Reply::Echo { delay, text, usage } => echo(delay, text, usage, chat),
        Reply::Status(code) => once(
            StatusCode::from_u16(code).unwrap(),
            "application/json",
            serde_json::json!({"error": {"message": "mock error", "type": "mock", "code": code}})
                .to_string(),
        ),
        Reply::Stream {
            ttft,
            tokens,
            gap,
            class,
        } => stream((ttft, tokens, gap, class), chat),
    })
}

/// Starts the mock on a free loopback port; the reply follows the key.
pub async fn start(behaviour: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Mock {
    start_with(move |key, _| behaviour(key)).await
}

/// Starts the mock; the reply follows the key and the request body.
pub async fn start_with(
    behaviour: impl Fn(&str, &serde_json::Value) -> Reply + Send + Sync + 'static,
) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let behaviour: Behaviour = Arc::new(behaviour);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let times = Arc::new(Mutex::new(Vec::new()));
    let seen2: Seen = (seen.clone(), times.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // Without it, Nagle + delayed ACKs hold each small SSE chunk
            // ~40 ms and the tokens arrive together.
            stream.set_nodelay(true).unwrap();
            let (b, s) = (behaviour.clone(), seen2.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(b.clone(), s.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Mock { addr, seen, times }
}

/// A reply streaming 3 tokens after `ttft_ms`, 5 ms apart.
pub fn tokens_after(ttft_ms: u64, class: Option<&'static str>) -> Reply {
    Reply::Stream {
        ttft: Duration::from_millis(ttft_ms),
        tokens: 3,
        gap: Duration::from_millis(5),
        class,
    }
}
