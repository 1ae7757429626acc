//! What a client gets back: OpenAI's completion and chat objects, whole
//! or as stream chunks, with the usage and Cake's own counts.

use std::time::{SystemTime, UNIX_EPOCH};

use cake_engine::worker::{TokenEvent, Usage};
use cake_engine::{TokenLogprob, Tokenizer};
use serde_json::{Map, Value, json};

use super::request::Api;

/// The usage object: OpenAI's fields plus `cake`.
pub fn usage_json(u: &Usage, class: &str, ttft_ms: f64) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "cake": {
            "class": class,
            "loaded_tokens": u.loaded_tokens,
            "computed_tokens": u.computed_tokens,
            "shared_tokens": u.shared_tokens,
            "ttft_ms": (ttft_ms * 1000.0).round() / 1000.0,
            "worker": u.worker,
        }
    })
}

/// Builds the response objects of one request. Streaming keeps a little
/// state (the text offset of completion logprobs).
pub struct Renderer {
    api: Api,
    id: String,
    model: String,
    created: u64,
    tokenizer: Tokenizer,
    /// Alternatives per token when log-probabilities were asked for.
    logprobs: Option<usize>,
    /// Completions with `echo`: the prompt's ids and text.
    echo: Option<(Vec<u32>, String)>,
    offset: usize,
}

impl Renderer {
    pub fn new(
        api: Api,
        request_id: &str,
        model: &str,
        tokenizer: Tokenizer,
        logprobs: Option<usize>,
        echo: Option<(Vec<u32>, String)>,
    ) -> Renderer {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let prefix = match api {
            Api::Completions => "cmpl-",
            Api::Chat => "chatcmpl-",
        };
        Renderer {
            api,
            id: format!("{prefix}{request_id}"),
            model: model.to_string(),
            created,
            tokenizer,
            logprobs,
            echo,
            offset: 0,
        }
    }

    fn object(&self, stream: bool) -> &'static str {
        match (self.api, stream) {
            (Api::Completions, _) => "text_completion",
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, stream: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(stream),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn top_map(&self, lp: &TokenLogprob) -> Value {
        let mut m = Map::new();
        for &(id, l) in &lp.top {
            m.insert(self.tokenizer.token_text(id), json!(l));
        }
        m.entry(self.tokenizer.token_text(lp.token))
            .or_insert(json!(lp.logprob));
        Value::Object(m)
    }

    /// Completion logprobs for a run of tokens (`None` entries: no
    /// log-probability, e.g. the first prompt token).
    fn completion_logprobs(&mut self, items: &[(u32, Option<&TokenLogprob>)]) -> Value {
        let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
        for (id, lp) in items {
            let text = self.tokenizer.token_text(*id);
            offsets.push(self.offset);
            self.offset += text.chars().count();
            tokens.push(text);
            lps.push(lp.map_or(Value::Null, |l| json!(l.logprob)));
            tops.push(lp.map_or(Value::Null, |l| self.top_map(l)));
        }
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
    }

    fn chat_logprob(&self, lp: &TokenLogprob) -> Value {
        let entry = |id: u32, l: f32| {
            let t = self.tokenizer.token_text(id);
            json!({"token": t, "logprob": l, "bytes": t.as_bytes()})
        };
        let mut v = entry(lp.token, lp.logprob);
        v["top_logprobs"] = Value::Array(lp.top.iter().map(|&(id, l)| entry(id, l)).collect());
        v
    }

    /// The prompt part of an echoed completion: its text and logprobs.
    fn echo_part(
        &mut self,
        prompt_logprobs: Option<&[Option<TokenLogprob>]>,
    ) -> (String, Vec<(u32, Option<TokenLogprob>)>) {
        let Some((ids, text)) = self.echo.clone() else {
            return (String::new(), Vec::new());
        };
        let items = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                (
                    id,
                    prompt_logprobs.and_then(|p| p.get(i).cloned().flatten()),
                )
            })
            .collect();
        (text, items)
    }

    /// The whole (non-streaming) response.
    pub fn full(
        &mut self,
        tokens: &[TokenEvent],
        text: &str,
        prompt_logprobs: Option<&[Option<TokenLogprob>]>,
        finish_reason: &str,
        usage: Value,
    ) -> Value {
        let choice = match self.api {
            Api::Completions => {
                let (echo_text, echo_items) = self.echo_part(prompt_logprobs);
                let logprobs = if self.logprobs.is_some() {
                    let mut items: Vec<(u32, Option<&TokenLogprob>)> =
                        echo_items.iter().map(|(id, l)| (*id, l.as_ref())).collect();
                    items.extend(tokens.iter().map(|t| (t.token, t.logprob.as_ref())));
                    self.completion_logprobs(&items)
                } else {
                    Value::Null
                };
                json!({"index": 0, "text": format!("{echo_text}{text}"), "logprobs": logprobs,
                       "finish_reason": finish_reason})
            }
            Api::Chat => {
                let logprobs = if self.logprobs.is_some() {
                    let content: Vec<Value> = tokens
                        .iter()
                        .filter_map(|t| t.logprob.as_ref().map(|l| self.chat_logprob(l)))
                        .collect();
                    json!({"content": content})
                } else {
                    Value::Null
                };
                json!({"index": 0, "message": {"role": "assistant", "content": text},
                       "logprobs": logprobs, "finish_reason": finish_reason})
            }
        };
        let mut v = self.envelope(false, json!([choice]));
        v["usage"] = usage;
        v
    }

    /// The chunks that open a stream: the chat role, or an echoed prompt.
    pub fn stream_start(
        &mut self,
        prompt_logprobs: Option<&[Option<TokenLogprob>]>,
    ) -> Option<Value> {
        match self.api {
            Api::Chat => Some(self.envelope(
                true,
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                        "logprobs": null, "finish_reason": null}]),
            )),
            Api::Completions => {
                self.echo.as_ref()?;
                let (text, items) = self.echo_part(prompt_logprobs);
                let logprobs = if self.logprobs.is_some() {
                    let items: Vec<(u32, Option<&TokenLogprob>)> =
                        items.iter().map(|(id, l)| (*id, l.as_ref())).collect();
                    self.completion_logprobs(&items)
                } else {
                    Value::Null
                };
                Some(self.envelope(
                    true,
                    json!([{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": null}]),
                ))
            }
        }
    }

    /// The chunk for one token (`None` when it carries nothing to show).
    pub fn stream_token(&mut self, t: &TokenEvent) -> Option<Value> {
        let want_lp = self.logprobs.is_some() && t.logprob.is_some();
        if t.text.is_empty() && !want_lp {
            return None;
        }
        let choice = match self.api {
            Api::Completions => {
                let logprobs = if want_lp {
                    self.completion_logprobs(&[(t.token, t.logprob.as_ref())])
                } else {
                    Value::Null
                };
                json!({"index": 0, "text": t.text, "logprobs": logprobs, "finish_reason": null})
            }
            Api::Chat => {
                let logprobs = match (&t.logprob, want_lp) {
                    (Some(l), true) => json!({"content": [self.chat_logprob(l)]}),
                    _ => Value::Null,
                };
                json!({"index": 0, "delta": {"content": t.text}, "logprobs": logprobs,
                       "finish_reason": null})
            }
        };
        Some(self.envelope(true, json!([choice])))
    }

    /// The chunk that ends the choice.
    pub fn stream_finish(&self, finish_reason: &str) -> Value {
        let choice = match self.api {
            Api::Completions => {
                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish_reason})
            }
            Api::Chat => {
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason})
            }
        };
        self.envelope(true, json!([choice]))
    }

    /// `stream_options.include_usage`: the last chunk, with no choices.
    pub fn stream_usage(&self, usage: Value) -> Value {
        let mut v = self.envelope(true, json!([]));
        v["usage"] = usage;
        v
    }
}
