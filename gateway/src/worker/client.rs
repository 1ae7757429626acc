//! The HTTP client remote workers share: a pooled hyper client with
//! connect and response-head timeouts, and the framing of streamed bodies:
//! NDJSON lines (`tokio-util`'s `LinesCodec`) and server-sent events
//! (`eventsource-stream`).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt, TryStreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

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

/// Most bytes one line of a streamed body may hold (an NDJSON event, an
/// SSE field); the worker's request body bound.
pub(crate) const MAX_LINE: usize = 64 << 20;

/// A streamed body's bytes, its errors as I/O errors (for the framers).
pub(crate) fn body_bytes(body: Incoming) -> impl Stream<Item = io::Result<Bytes>> + Send {
    body.into_data_stream().map_err(io::Error::other)
}

/// A read error as a worker error: the transport broke.
pub(crate) fn broken(e: &io::Error) -> WorkerError {
    WorkerError::Unreachable(format!("stream broken: {}", error_chain(e)))
}

/// The stream up to and including its first error.
pub(crate) fn until_error<T: Send, E: Send>(
    s: impl Stream<Item = Result<T, E>> + Send,
) -> impl Stream<Item = Result<T, E>> + Send {
    let mut failed = false;
    s.take_while(move |r| {
        let go = !failed;
        failed |= r.is_err();
        futures::future::ready(go)
    })
}

/// The body's lines (without `\n` or `\r\n`), as they arrive; a last
/// line without a newline counts. A line over [`MAX_LINE`] bytes, or one
/// that is not UTF-8, ends the stream with an error.
pub(crate) fn lines(
    bytes: impl Stream<Item = io::Result<Bytes>> + Send,
) -> impl Stream<Item = Result<String, WorkerError>> + Send {
    let codec = LinesCodec::new_with_max_length(MAX_LINE);
    until_error(
        FramedRead::new(StreamReader::new(bytes), codec).map_err(|e| match e {
            LinesCodecError::MaxLineLengthExceeded => {
                WorkerError::Internal(format!("a streamed line is over {MAX_LINE} bytes"))
            }
            LinesCodecError::Io(e) => broken(&e),
        }),
    )
}

/// The bytes, failing (as `InvalidData`) once a line runs over
/// [`MAX_LINE`] bytes without its newline: what a framer may buffer.
fn bounded_lines(
    bytes: impl Stream<Item = io::Result<Bytes>> + Send,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let mut open = 0usize;
    bytes.map(move |r| {
        r.and_then(|b| {
            open = match b.iter().rposition(|&c| c == b'\n') {
                Some(p) => b.len() - p - 1,
                None => open + b.len(),
            };
            if open > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a streamed line is over {MAX_LINE} bytes"),
                ));
            }
            Ok(b)
        })
    })
}

/// The `data` of each server-sent event (its `data:` lines joined by
/// `\n`), as events complete; comments (keep-alives), `event:` and `id:`
/// are dropped, and a last event without its blank line counts. A line
/// over [`MAX_LINE`] bytes or a stream that is not UTF-8 ends it with an
/// error.
pub(crate) fn sse_data(
    bytes: impl Stream<Item = io::Result<Bytes>> + Send,
) -> impl Stream<Item = Result<String, WorkerError>> + Send {
    let end = futures::stream::iter([Ok(Bytes::from_static(b"\n\n"))]);
    let events = bounded_lines(bytes).chain(end).eventsource();
    until_error(events.map(|r| match r {
        Ok(ev) => Ok(ev.data),
        Err(EventStreamError::Transport(e)) if e.kind() == io::ErrorKind::InvalidData => {
            Err(WorkerError::Internal(e.to_string()))
        }
        Err(EventStreamError::Transport(e)) => Err(broken(&e)),
        Err(e) => Err(WorkerError::Internal(format!("bad event stream: {e}"))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&str]) -> impl Stream<Item = io::Result<Bytes>> + Send + use<> {
        let v: Vec<_> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p.as_bytes())))
            .collect();
        futures::stream::iter(v)
    }

    fn collect<T>(s: impl Stream<Item = Result<T, WorkerError>>) -> Vec<Result<T, WorkerError>> {
        futures::executor::block_on(s.collect())
    }

    #[test]
    fn lines_split_across_chunks_and_crlf() {
        let got = collect(lines(chunks(&[
            "{\"a\"",
            ":1}\r",
            "\n{\"b\":2}\n",
            "\nlast",
        ])));
        let got: Vec<_> = got.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(got, [r#"{"a":1}"#, r#"{"b":2}"#, "", "last"]);
    }

    #[test]
    fn lines_broken_or_oversized_end_with_an_error() {
        let s = chunks(&["x\n"]).chain(futures::stream::iter([Err(io::Error::other("reset"))]));
        let got = collect(lines(s));
        assert_eq!(got.len(), 2);
        assert!(
            matches!(&got[1], Err(WorkerError::Unreachable(m)) if m.contains("stream broken: reset"))
        );

        let long = "y".repeat(MAX_LINE + 1);
        let got = collect(lines(chunks(&[&long, "\nz\n"])));
        assert!(
            matches!(&got[..], [Err(WorkerError::Internal(_))]),
            "{got:?}"
        );
    }

    #[test]
    fn sse_split_across_chunks_crlf_and_comments() {
        let body =
            "data: {\"a\":1}\r\n\r\n: keep-alive\n\nevent: x\ndata: b\ndata: c\n\ndata: [DONE]";
        for split in 0..body.len() {
            let got = collect(sse_data(chunks(&[&body[..split], &body[split..]])));
            let got: Vec<_> = got.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(got, [r#"{"a":1}"#, "b\nc", "[DONE]"], "split at {split}");
        }
    }

    #[test]
    fn sse_broken_garbled_or_oversized_end_with_an_error() {
        let s =
            chunks(&["data: 1\n\n"]).chain(futures::stream::iter([Err(io::Error::other("reset"))]));
        let got = collect(sse_data(s));
        assert!(
            matches!(&got[..], [Ok(_), Err(WorkerError::Unreachable(m))] if m.contains("reset"))
        );

        let s = futures::stream::iter([Ok(Bytes::from_static(b"data: \xff\xfe\n\n"))]);
        let got = collect(sse_data(s));
        assert!(
            matches!(got.last(), Some(Err(WorkerError::Internal(_)))),
            "{got:?}"
        );

        let long = "y".repeat(MAX_LINE + 1);
        let got = collect(sse_data(chunks(&["data: ", &long])));
        assert!(
            matches!(&got[..], [Err(WorkerError::Internal(m))] if m.contains("over")),
            "{got:?}"
        );
    }
}
