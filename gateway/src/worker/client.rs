//! The HTTP client remote workers share: a pooled hyper client with
//! connect and response-head timeouts, and a line splitter for streamed
//! bodies (NDJSON and server-sent events).

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use cake_engine::worker::WorkErrorKind;

use super::WorkerError;

/// A pooled HTTP/1 client to one base URL.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    timeout: Duration,
    bearer: Option<String>,
}

impl HttpClient {
    pub(crate) fn new(base: &str, timeout: Duration, bearer: Option<String>) -> HttpClient {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(timeout));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        HttpClient {
            client,
            base: base.trim_end_matches('/').to_string(),
            timeout,
            bearer,
        }
    }

    /// Sends a request and waits (at most the timeout) for the response's
    /// head. A status other than 2xx is an error carrying the body's text.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<Incoming>, WorkerError> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if body.is_some() {
            b = b.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.bearer {
            b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| WorkerError::Internal(format!("building request: {e}")))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| WorkerError::Timeout(self.timeout))?
            .map_err(|e| WorkerError::Unreachable(error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Err(status_error(status, text))
    }

    /// A whole JSON answer (for health, load and classify).
    pub(crate) async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, WorkerError> {
        let resp = self.send(method, path, body).await?;
        let bytes = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| WorkerError::Timeout(self.timeout))?
            .map_err(|e| WorkerError::Unreachable(error_chain(&e)))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| WorkerError::Internal(format!("{path}: unexpected answer: {e}")))
    }
}

/// A `cake worker`'s error body: `{"error": {"kind", "message"}}`.
#[derive(serde::Deserialize)]
struct KindBody {
    error: KindError,
}

#[derive(serde::Deserialize)]
struct KindError {
    kind: WorkErrorKind,
    message: String,
}

/// A refusal as a worker error: by the body's `kind` when it has one (a
/// `cake worker`), else by the status (an OpenAI server, an older worker,
/// a proxy in between).
fn status_error(status: StatusCode, text: String) -> WorkerError {
    if let Ok(b) = serde_json::from_str::<KindBody>(&text) {
        return WorkerError::from_kind(b.error.kind, b.error.message);
    }
    let msg = format!(
        "HTTP {status}: {}",
        text.chars().take(500).collect::<String>()
    );
    match status.as_u16() {
        400 | 404 | 413 | 422 => WorkerError::BadRequest(msg),
        429 => WorkerError::Overloaded(msg),
        503 => WorkerError::Unavailable(msg),
        502 | 504 => WorkerError::Unreachable(msg),
        _ => WorkerError::Internal(msg),
    }
}

/// The error and its sources, one line (hyper's top error says little).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The body's lines (without the line ending), as they arrive.
pub(crate) fn lines(body: Incoming) -> impl Stream<Item = Result<String, WorkerError>> + Send {
    let frames = BodyStream::new(body);
    futures::stream::unfold(
        (frames, BytesMut::new(), false),
        |(mut frames, mut buf, mut ended)| async move {
            loop {
                if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line = buf.split_to(pos + 1);
                    let text = String::from_utf8_lossy(&line[..pos]);
                    let text = text.strip_suffix('\r').unwrap_or(&text).to_string();
                    return Some((Ok(text), (frames, buf, ended)));
                }
                if ended {
                    if buf.is_empty() {
                        return None;
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    buf.clear();
                    return Some((Ok(text), (frames, buf, ended)));
                }
                match frames.next().await {
                    Some(Ok(frame)) => {
                        if let Ok(mut data) = frame.into_data() {
                            while data.has_remaining() {
                                let chunk = data.chunk();
                                let n = chunk.len();
                                buf.extend_from_slice(chunk);
                                data.advance(n);
                            }
                        }
                    }
                    Some(Err(e)) => {
                        ended = true;
                        buf.clear();
                        return Some((
                            Err(WorkerError::Unreachable(format!(
                                "stream broken: {}",
                                error_chain(&e)
                            ))),
                            (frames, buf, ended),
                        ));
                    }
                    None => ended = true,
                }
            }
        },
    )
}
