//! The HTTP side: a keep-alive hyper client, request bodies, and sending one
//! streaming request while timing its first token.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::time::Instant;

use crate::prompt::Prompt;
use crate::sse::SseReader;

/// The client every request goes through: HTTP/1.1 with a keep-alive pool.
pub(crate) type Http = Client<HttpConnector, Full<Bytes>>;

/// Builds the client. Idle connections are kept (up to `max_idle`) so that a
/// steady rate reuses sockets instead of opening one per request.
pub(crate) fn http_client(max_idle: usize) -> Http {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(60))
        .build(conn)
}

/// Which OpenAI endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Endpoint {
    /// `POST /v1/completions` with `prompt`.
    Completions,
    /// `POST /v1/chat/completions` with `messages`.
    Chat,
}

impl Endpoint {
    /// Path under the target.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// `base` (`http://host:port[/prefix]`) joined with `path`.
pub(crate) fn join(base: &str, path: &str) -> Result<Uri, String> {
    let base = base.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(format!("target {base:?}: only http:// URLs are supported"));
    }
    format!("{base}{path}")
        .parse()
        .map_err(|e| format!("target {base:?}: {e}"))
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PromptField<'a> {
    Text(&'a str),
    Tokens(&'a [u32]),
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<PromptField<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<ChatMessage<'a>>>,
    max_tokens: u32,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore_eos: Option<bool>,
}

/// Fields of a body besides the prompt.
#[derive(Debug, Clone)]
pub(crate) struct BodyParams {
    pub model: String,
    pub temperature: Option<f64>,
    pub ignore_eos: bool,
}

/// Serializes a streaming request body.
pub(crate) fn body(p: &BodyParams, prompt: &Prompt, max_tokens: u32) -> Bytes {
    let (prompt_field, messages) = match prompt {
        Prompt::Text(s) => (Some(PromptField::Text(s)), None),
        Prompt::Tokens(t) => (Some(PromptField::Tokens(t)), None),
        Prompt::Chat(m) => (
            None,
            Some(
                m.iter()
                    .map(|m| ChatMessage {
                        role: m.role,
                        content: &m.content,
                    })
                    .collect(),
            ),
        ),
    };
    let b = Body {
        model: &p.model,
        prompt: prompt_field,
        messages,
        max_tokens,
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        temperature: p.temperature,
        ignore_eos: p.ignore_eos.then_some(true),
    };
    // Serializing plain structs of strings and numbers cannot fail.
    Bytes::from(serde_json::to_vec(&b).unwrap_or_default())
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Streamed to the end.
    Ok,
    /// The server answered with a non-2xx status.
    Status(u16),
    /// Not finished within `request_timeout_s` of its intended send time.
    Timeout,
    /// Could not connect.
    Connect,
    /// The connection failed mid-request.
    Transport,
    /// The stream carried an error event or unreadable data.
    Stream,
    /// The stream ended with neither `data: [DONE]` nor an error event:
    /// the answer was lost without a word.
    Truncated,
}

impl Outcome {
    /// The key errors are counted under: the status code, or a word.
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Status(s) => s.to_string(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Connect => "connect".into(),
            Outcome::Transport => "transport".into(),
            Outcome::Stream => "stream".into(),
            Outcome::Truncated => "truncated".into(),
        }
    }
}

/// What one request saw.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub outcome: Outcome,
    pub first_token: Option<Instant>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub class: Option<String>,
    pub reuse: Reuse,
    /// The generated text, when asked for.
    pub text: Option<String>,
}

/// What the server said about prefix reuse, each field only when sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reuse {
    /// `usage.prompt_tokens_details.cached_tokens`.
    pub cached_tokens: Option<u32>,
    /// `usage.cake.computed_tokens`: prompt tokens this request prefilled.
    pub computed_tokens: Option<u32>,
    /// `usage.cake.shared_tokens`: prompt tokens taken from another request
    /// computing the same prefix at the same time.
    pub shared_tokens: Option<u32>,
}

fn clamp(v: u64) -> u32 {
    v.min(u64::from(u32::MAX)) as u32
}

impl Sent {
    pub(crate) fn failed(outcome: Outcome) -> Self {
        Sent {
            outcome,
            first_token: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            class: None,
            reuse: Reuse::default(),
            text: None,
        }
    }
}

/// Builds a POST carrying `body`.
pub(crate) fn post(uri: &Uri, auth: Option<&HeaderValue>, body: Bytes) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri.clone();
    let h = req.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    if let Some(a) = auth {
        h.insert(header::AUTHORIZATION, a.clone());
    }
    req
}

/// Sends one streaming request and reads it to the end; `keep_text` keeps
/// the generated text in [`Sent::text`].
pub(crate) async fn send(http: &Http, req: Request<Full<Bytes>>, keep_text: bool) -> Sent {
    let resp = match http.request(req).await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Sent::failed(Outcome::Connect),
        Err(_) => return Sent::failed(Outcome::Transport),
    };
    let status = resp.status();
    let body = resp.into_body();
    if !status.is_success() {
        // Read the (small) error body so the connection can be reused.
        let _ = body.collect().await;
        return Sent::failed(Outcome::Status(status.as_u16()));
    }
    let mut reader = if keep_text {
        SseReader::keeping_text()
    } else {
        SseReader::default()
    };
    let mut first_token = None;
    let read = reader.read(body.into_data_stream(), || {
        first_token.get_or_insert_with(Instant::now);
    });
    if read.await.is_err() {
        return Sent::failed(Outcome::Transport);
    }
    let s = reader.state;
    let completion = clamp(s.completion_tokens.unwrap_or(u64::from(s.token_events)));
    Sent {
        outcome: if s.error {
            Outcome::Stream
        } else if !s.done {
            Outcome::Truncated
        } else {
            Outcome::Ok
        },
        first_token,
        prompt_tokens: clamp(s.prompt_tokens.unwrap_or(0)),
        completion_tokens: completion,
        class: s.class,
        reuse: Reuse {
            cached_tokens: s.cached_tokens.map(clamp),
            computed_tokens: s.computed_tokens.map(clamp),
            shared_tokens: s.shared_tokens.map(clamp),
        },
        text: s.text,
    }
}

/// `GET uri`, bounded by `timeout`: the status and body.
pub(crate) async fn get(
    http: &Http,
    uri: Uri,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    get_with(http, uri, timeout, None).await
}

/// [`get`] with an `Authorization` header.
pub(crate) async fn get_with(
    http: &Http,
    uri: Uri,
    timeout: Duration,
    auth: Option<&HeaderValue>,
) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::get(uri.clone());
    if let Some(a) = auth {
        req = req.header(hyper::header::AUTHORIZATION, a.clone());
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = http
            .request(req)
            .await
            .map_err(|e| format!("GET {uri}: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {uri}: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("GET {uri}: no answer within {timeout:?}"))?
}

/// The model to ask for: the first id listed by `GET /v1/models` (sent
/// with `auth`, the first tenant's key, for servers that require one), or
/// `default` when the server lists none or has no such endpoint.
pub(crate) async fn discover_model(http: &Http, base: &str, auth: Option<&HeaderValue>) -> String {
    #[derive(serde::Deserialize)]
    struct Models {
        data: Vec<ModelEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ModelEntry {
        id: String,
    }
    let Ok(uri) = join(base, "/v1/models") else {
        return "default".into();
    };
    match get_with(http, uri, Duration::from_secs(10), auth).await {
        Ok((s, body)) if s.is_success() => serde_json::from_slice::<Models>(&body)
            .ok()
            .and_then(|m| m.data.into_iter().next())
            .map_or_else(|| "default".into(), |m| m.id),
        _ => "default".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::Message;

    #[test]
    fn bodies_use_standard_fields() {
        let p = BodyParams {
            model: "m".into(),
            temperature: None,
            ignore_eos: false,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body(&p, &Prompt::Tokens(vec![1, 2]), 8)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model": "m", "prompt": [1, 2], "max_tokens": 8, "stream": true,
                "stream_options": {"include_usage": true}})
        );
        let chat = Prompt::Chat(vec![Message {
            role: "user",
            content: "hi".into(),
        }]);
        let v: serde_json::Value = serde_json::from_slice(&body(&p, &chat, 8)).unwrap();
        assert_eq!(
            v["messages"],
            serde_json::json!([{"role": "user", "content": "hi"}])
        );
        assert!(v.get("prompt").is_none());
    }

    #[test]
    fn join_keeps_prefixes_and_rejects_https() {
        assert_eq!(
            join("http://127.0.0.1:8080/", "/v1/completions").unwrap(),
            "http://127.0.0.1:8080/v1/completions"
        );
        assert_eq!(
            join("http://h/api", "/v1/models").unwrap(),
            "http://h/api/v1/models"
        );
        assert!(join("https://h", "/x").is_err());
    }
}
