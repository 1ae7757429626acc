//! Any OpenAI-compatible server (vLLM, SGLang, another gateway) as a
//! worker. A request goes upstream as a streaming `/v1/completions` call
//! with the prompt as token ids (so the gateway's chat template and
//! tokenizer decide the prompt, as with any worker); text chunks come back
//! as tokens. It cannot classify, and its load is what the gateway's
//! ledger says it has in flight.
//!
//! Upstream text pieces carry no token ids, so tokens here have id 0 and
//! per-token log-probabilities are not passed through.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use cake_engine::worker::{Classification, LoadReport, TokenEvent, Usage, WorkEvent, WorkRequest};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use http::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::client::{HttpClient, body_bytes, sse_data};
use super::{EventStream, Worker, WorkerError};
use crate::config::WorkerKind;

/// See the module docs.
pub struct OpenAiWorker {
    name: String,
    model: String,
    http: HttpClient,
}

impl OpenAiWorker {
    pub fn new(name: &str, url: &str, model: &str, api_key: &str, timeout: Duration) -> Self {
        let bearer = (!api_key.is_empty()).then(|| api_key.to_string());
        OpenAiWorker {
            name: name.to_string(),
            model: model.to_string(),
            http: HttpClient::new(url, timeout, bearer),
        }
    }
}

fn upstream_body(model: &str, req: &WorkRequest) -> Value {
    let o = &req.options;
    let mut b = json!({
        "model": model,
        "prompt": req.prompt,
        "max_tokens": o.max_tokens,
        "temperature": o.temperature,
        "top_p": o.top_p,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(m) = b.as_object_mut() {
        if let Some(seed) = o.seed {
            m.insert("seed".into(), json!(seed));
        }
        if !o.stop.is_empty() {
            m.insert("stop".into(), json!(o.stop));
        }
        // vLLM's extras, sent only when they differ from the defaults so
        // that strict OpenAI servers are not bothered by them.
        if o.ignore_eos {
            m.insert("ignore_eos".into(), json!(true));
        }
        if o.min_tokens > 0 {
            m.insert("min_tokens".into(), json!(o.min_tokens));
        }
        if o.top_k > 0 {
            m.insert("top_k".into(), json!(o.top_k));
        }
        if o.repetition_penalty != 1.0 {
            m.insert("repetition_penalty".into(), json!(o.repetition_penalty));
        }
    }
    b
}

/// Reads a field as `T`, or as absent when it has another shape: an
/// upstream's odd field is skipped, as it was when chunks were indexed as
/// untyped JSON.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(T::deserialize(v).ok())
}

/// One streamed `/v1/completions` chunk upstream; only what is read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Chunk {
    #[serde(deserialize_with = "lenient")]
    choices: Option<Vec<Choice>>,
    #[serde(deserialize_with = "lenient")]
    usage: Option<UpstreamUsage>,
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Choice {
    #[serde(deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(deserialize_with = "lenient")]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct UpstreamUsage {
    #[serde(deserialize_with = "lenient")]
    prompt_tokens: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    completion_tokens: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct PromptDetails {
    #[serde(deserialize_with = "lenient")]
    cached_tokens: Option<u64>,
}

/// Turns upstream SSE events' data into work events.
struct Translate {
    worker: String,
    started: Instant,
    ttft_ms: Option<f64>,
    tokens: usize,
    prompt_tokens: usize,
    finish: Option<String>,
    usage: Option<UpstreamUsage>,
    done: bool,
}

impl Translate {
    fn done_event(&mut self) -> WorkEvent {
        self.done = true;
        let u = self.usage.take().unwrap_or_default();
        let num = |v: Option<u64>| v.map(|x| x as usize);
        let prompt_tokens = num(u.prompt_tokens).unwrap_or(self.prompt_tokens);
        let cached = num(u.prompt_tokens_details.and_then(|d| d.cached_tokens)).unwrap_or(0);
        WorkEvent::Done {
            finish_reason: self.finish.take().unwrap_or_else(|| "stop".into()),
            usage: Usage {
                prompt_tokens,
                completion_tokens: num(u.completion_tokens).unwrap_or(self.tokens),
                cached_tokens: cached,
                loaded_tokens: cached,
                computed_tokens: prompt_tokens.saturating_sub(cached),
                shared_tokens: 0,
                ttft_ms: self.ttft_ms.unwrap_or(0.0),
                total_ms: self.started.elapsed().as_secs_f64() * 1e3,
                strategy: String::new(),
                worker: self.worker.clone(),
            },
        }
    }

    /// Events for one SSE event's data (maybe none).
    fn data(&mut self, data: &str) -> Result<Vec<WorkEvent>, WorkerError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(if self.done {
                vec![]
            } else {
                vec![self.done_event()]
            });
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| WorkerError::Internal(format!("bad upstream chunk: {e}: {data}")))?;
        if let Some(err) = chunk.error {
            return Err(WorkerError::Internal(format!("upstream error: {err}")));
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        let mut out = Vec::new();
        if let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) {
            let text = choice.text.unwrap_or_default();
            if !text.is_empty() {
                self.ttft_ms
                    .get_or_insert_with(|| self.started.elapsed().as_secs_f64() * 1e3);
                self.tokens += 1;
                out.push(WorkEvent::Token(TokenEvent {
                    token: 0,
                    text,
                    logprob: None,
                }));
            }
            if let Some(f) = choice.finish_reason {
                self.finish = Some(f);
            }
        }
        Ok(out)
    }
}

/// Work events for the upstream's events' data; the end of the stream
/// without `[DONE]` or a finish reason is an error.
fn translate(
    src: impl Stream<Item = Result<String, WorkerError>> + Send + 'static,
    tr: Translate,
) -> EventStream {
    let state = (Box::pin(src), tr, VecDeque::new());
    let events = futures::stream::unfold(state, |(mut src, mut tr, mut pending)| async move {
        loop {
            if let Some(ev) = pending.pop_front() {
                return Some((ev, (src, tr, pending)));
            }
            if tr.done {
                return None;
            }
            match src.next().await {
                Some(Ok(data)) => match tr.data(&data) {
                    Ok(evs) => pending.extend(evs.into_iter().map(Ok)),
                    Err(e) => {
                        tr.done = true;
                        pending.push_back(Err(e));
                    }
                },
                Some(Err(e)) => {
                    tr.done = true;
                    pending.push_back(Err(e));
                }
                None if tr.finish.is_some() => pending.push_back(Ok(tr.done_event())),
                None => {
                    tr.done = true;
                    pending.push_back(Err(WorkerError::Unreachable(
                        "upstream stream ended early".into(),
                    )));
                }
            }
        }
    });
    Box::pin(events)
}

impl Worker for OpenAiWorker {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> WorkerKind {
        WorkerKind::Openai
    }

    fn submit(&self, req: WorkRequest) -> BoxFuture<'static, Result<EventStream, WorkerError>> {
        let http = self.http.clone();
        let body = upstream_body(&self.model, &req);
        let tr = Translate {
            worker: self.name.clone(),
            started: Instant::now(),
            ttft_ms: None,
            tokens: 0,
            prompt_tokens: req.prompt.len(),
            finish: None,
            usage: None,
            done: false,
        };
        async move {
            let body =
                serde_json::to_vec(&body).map_err(|e| WorkerError::Internal(e.to_string()))?;
            let resp = http
                .send(Method::POST, "/v1/completions", Some(body))
                .await?;
            Ok(translate(sse_data(body_bytes(resp.into_body())), tr))
        }
        .boxed()
    }

    fn classify(
        &self,
        _prompt: Vec<u32>,
        _cache_group: String,
    ) -> BoxFuture<'static, Result<Classification, WorkerError>> {
        futures::future::ready(Err(WorkerError::Unsupported("classify"))).boxed()
    }

    fn load(&self) -> BoxFuture<'static, Result<LoadReport, WorkerError>> {
        futures::future::ready(Ok(LoadReport {
            worker: self.name.clone(),
            ..LoadReport::default()
        }))
        .boxed()
    }

    fn health(&self) -> BoxFuture<'static, Result<(), WorkerError>> {
        let http = self.http.clone();
        async move { http.send(Method::GET, "/health", None).await.map(|_| ()) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate() -> Translate {
        Translate {
            worker: "up".into(),
            started: Instant::now(),
            ttft_ms: None,
            tokens: 0,
            prompt_tokens: 5,
            finish: None,
            usage: None,
            done: false,
        }
    }

    fn texts(evs: &[WorkEvent]) -> Vec<&str> {
        evs.iter()
            .filter_map(|e| match e {
                WorkEvent::Token(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn chunks_become_tokens_and_usage() {
        let mut t = translate();
        let a = t
            .data(r#"{"choices": [{"text": "ab", "finish_reason": null}]}"#)
            .unwrap();
        assert_eq!(texts(&a), ["ab"]);
        // Odd shapes are skipped, not errors.
        assert!(
            t.data(r#"{"choices": 3, "usage": null}"#)
                .unwrap()
                .is_empty()
        );
        assert!(t.data(r#"{"choices": [{"text": 7}]}"#).unwrap().is_empty());
        let b = t
            .data(r#"{"choices": [{"text": "c", "finish_reason": "length"}]}"#)
            .unwrap();
        assert_eq!(texts(&b), ["c"]);
        t.data(
            r#"{"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4}}}"#,
        )
        .unwrap();
        let done = t.data("[DONE]").unwrap();
        let [
            WorkEvent::Done {
                finish_reason,
                usage,
            },
        ] = &done[..]
        else {
            panic!("{done:?}");
        };
        assert_eq!(finish_reason, "length");
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens
            ),
            (9, 2, 4)
        );
        assert_eq!((usage.computed_tokens, usage.worker.as_str()), (5, "up"));
        assert!(t.data("[DONE]").unwrap().is_empty());
    }

    #[test]
    fn without_usage_the_counts_are_the_streams() {
        let mut t = translate();
        t.data(r#"{"choices": [{"text": "a"}]}"#).unwrap();
        let done = t.data("[DONE]").unwrap();
        let [
            WorkEvent::Done {
                finish_reason,
                usage,
            },
        ] = &done[..]
        else {
            panic!("{done:?}");
        };
        assert_eq!(finish_reason, "stop");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 1));
    }

    #[test]
    fn upstream_errors_and_garbage_are_errors() {
        let mut t = translate();
        assert!(t.data(r#"{"error": {"message": "boom"}}"#).is_err());
        assert!(t.data("{not json").is_err());
    }

    fn run(parts: &[&'static str]) -> Vec<Result<WorkEvent, WorkerError>> {
        let bytes = futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::from_static(p.as_bytes())))
                .collect::<Vec<_>>(),
        );
        futures::executor::block_on(super::translate(sse_data(bytes), translate()).collect())
    }

    #[test]
    fn a_stream_split_mid_line_with_crlf_and_keep_alives() {
        let evs = run(&[
            ": keep-alive\r\n\r\ndata: {\"choices\": [{\"te",
            "xt\": \"a\"}]}\r\n\r",
            "\ndata: {\"choices\": [{\"text\": \"b\", \"finish_reason\": \"length\"}]}\n\n",
            "data: [DONE]\n\n",
        ]);
        let evs: Vec<_> = evs.into_iter().map(|e| e.unwrap()).collect();
        assert_eq!(texts(&evs), ["a", "b"]);
        assert!(
            matches!(evs.last(), Some(WorkEvent::Done { finish_reason, .. }) if finish_reason == "length")
        );
    }

    #[test]
    fn a_stream_cut_short_is_an_error() {
        let evs = run(&["data: {\"choices\": [{\"text\": \"a\"}]}\n\n"]);
        assert!(
            matches!(evs.last(), Some(Err(WorkerError::Unreachable(m))) if m.contains("ended early"))
        );
        // `[DONE]` without its blank line still ends it.
        let evs = run(&["data: {\"choices\": [{\"text\": \"a\"}]}\n\ndata: [DONE]"]);
        assert!(matches!(evs.last(), Some(Ok(WorkEvent::Done { .. }))));
    }
}
