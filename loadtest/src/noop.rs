//! `cake-loadtest noop-server`: a stub OpenAI-compatible server that answers
//! at once with a few fixed tokens. It is a **measurement target** for the
//! load tester itself (how many requests per second the tool can drive while
//! staying on schedule), not a model: it reads only `max_tokens`, `stream`,
//! `stream_options` and the prompt's length (words of `prompt` or of the
//! `messages`' contents, reported as `prompt_tokens`), and its text is
//! meaningless.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt::Write;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;

/// Largest request body read (bigger ones get 413).
const MAX_BODY: usize = 16 << 20;

/// How the stub answers.
#[derive(Debug, Clone, Copy)]
pub struct NoopOptions {
    /// Most tokens streamed per request (`max_tokens` caps it further).
    pub max_output: u32,
    /// Hold each completion this long before answering (0: at once). Lets
    /// the tool be measured with thousands of requests in flight.
    pub delay: std::time::Duration,
}

impl Default for NoopOptions {
    fn default() -> Self {
        NoopOptions {
            max_output: 16,
            delay: std::time::Duration::ZERO,
        }
    }
}

#[derive(Deserialize)]
struct Req<'a> {
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOpts>,
    #[serde(default, borrow)]
    prompt: Option<PromptIn<'a>>,
    #[serde(default, borrow)]
    messages: Vec<MessageIn<'a>>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StreamOpts {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptIn<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Tokens(Vec<u64>),
    Other(serde::de::IgnoredAny),
}

fn respond(
    status: StatusCode,
    ctype: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": null}});
    respond(status, "application/json", body.to_string())
}

fn completion(opts: NoopOptions, chat: bool, body: &[u8]) -> Response<Full<Bytes>> {
    let Ok(req) = serde_json::from_slice::<Req<'_>>(body) else {
        return error(StatusCode::BAD_REQUEST, "body is not a JSON request");
    };
    let n = req.max_tokens.unwrap_or(16).min(opts.max_output).max(1);
    let prompt_tokens = match &req.prompt {
        Some(PromptIn::Text(s)) => s.split_whitespace().count(),
        Some(PromptIn::Tokens(t)) => t.len(),
        _ => req
            .messages
            .iter()
            .filter_map(|m| m.content.as_deref())
            .map(|c| c.split_whitespace().count())
            .sum(),
    };
    let object = if chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    let usage = format!(
        r#"{{"prompt_tokens":{prompt_tokens},"completion_tokens":{n},"total_tokens":{}}}"#,
        prompt_tokens + n as usize
    );
    if !req.stream {
        let choice = if chat {
            format!(
                r#"{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"length"}}"#,
                " x".repeat(n as usize)
            )
        } else {
            format!(
                r#"{{"index":0,"text":"{}","finish_reason":"length"}}"#,
                " x".repeat(n as usize)
            )
        };
        let body = format!(
            r#"{{"id":"noop","object":"{object}","created":0,"model":"noop","choices":[{choice}],"usage":{usage}}}"#
        );
        return respond(StatusCode::OK, "application/json", body);
    }
    let chunk_object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let mut out = String::with_capacity(160 * (n as usize + 2));
    for i in 0..n {
        let finish = if i + 1 == n { r#""length""# } else { "null" };
        let choice = if chat {
            format!(r#"{{"index":0,"delta":{{"content":" x"}},"finish_reason":{finish}}}"#)
        } else {
            format!(r#"{{"index":0,"text":" x","finish_reason":{finish}}}"#)
        };
        let _ = write!(
            out,
            "data: {{\"id\":\"noop\",\"object\":\"{chunk_object}\",\"created\":0,\"model\":\"noop\",\"choices\":[{choice}]}}\n\n"
        );
    }
    if req.stream_options.is_some_and(|o| o.include_usage) {
        let _ = write!(
            out,
            "data: {{\"id\":\"noop\",\"object\":\"{chunk_object}\",\"created\":0,\"model\":\"noop\",\"choices\":[],\"usage\":{usage}}}\n\n"
        );
    }
    out.push_str("data: [DONE]\n\n");
    respond(StatusCode::OK, "text/event-stream", out)
}

async fn handle(
    opts: NoopOptions,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let chat = match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => return Ok(respond(StatusCode::OK, "text/plain", "ok")),
        (&Method::GET, "/v1/models") => {
            return Ok(respond(
                StatusCode::OK,
                "application/json",
                r#"{"object":"list","data":[{"id":"noop","object":"model","created":0,"owned_by":"cake-loadtest"}]}"#,
            ));
        }
        (&Method::POST, "/v1/completions") => false,
        (&Method::POST, "/v1/chat/completions") => true,
        _ => {
            return Ok(error(
                StatusCode::NOT_FOUND,
                "no such endpoint on the noop server",
            ));
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or unreadable",
            ));
        }
    };
    if !opts.delay.is_zero() {
        tokio::time::sleep(opts.delay).await;
    }
    Ok(completion(opts, chat, &body))
}

/// Serves connections from `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, opts: NoopOptions) -> std::io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of file descriptors and the like: back off, keep serving.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(opts, req));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse_body(chat: bool, req: &str) -> String {
        let r = completion(
            NoopOptions {
                max_output: 3,
                ..NoopOptions::default()
            },
            chat,
            req.as_bytes(),
        );
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.into_body();
        let bytes = futures::executor::block_on(body.collect())
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn streams_capped_tokens_and_usage() {
        let s = sse_body(
            false,
            r#"{"model":"m","prompt":"a b c","max_tokens":10,"stream":true,"stream_options":{"include_usage":true}}"#,
        );
        let mut r = crate::sse::SseReader::default();
        assert_eq!(r.read_all(&[s.as_bytes()]), 3);
        assert!(r.state.done);
        assert_eq!(r.state.prompt_tokens, Some(3));
        assert_eq!(r.state.completion_tokens, Some(3));
        let s = sse_body(true, r#"{"messages":[],"max_tokens":2,"stream":true}"#);
        let mut r = crate::sse::SseReader::default();
        assert_eq!(r.read_all(&[s.as_bytes()]), 2);
        assert_eq!(r.state.completion_tokens, None);
        let s = sse_body(
            true,
            r#"{"messages":[{"role":"user","content":"a b"},{"role":"assistant","content":" x"}],"stream":true,"stream_options":{"include_usage":true}}"#,
        );
        let mut r = crate::sse::SseReader::default();
        r.read_all(&[s.as_bytes()]);
        assert_eq!(r.state.prompt_tokens, Some(3));
    }

    #[test]
    fn bad_json_is_400() {
        let r = completion(NoopOptions::default(), false, b"{nope");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
