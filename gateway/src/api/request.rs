//! Parsing and validating `/v1/completions` and `/v1/chat/completions`
//! bodies. Known fields with a wrong type or value are errors naming the
//! field; unknown fields are logged and ignored (clients of vLLM-style
//! servers send many).

use cake_engine::worker::WorkOptions;
use serde_json::Value;

use super::fields::Fields;
use crate::error::GatewayError;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Completions,
    Chat,
}

/// One chat message (text only).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What the prompt was given as.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
    Messages(Vec<ChatMessage>),
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub api: Api,
    /// `None`: the served model.
    pub model: Option<String>,
    pub input: PromptInput,
    /// Sampling and output options for the worker (`max_tokens` resolved).
    pub options: WorkOptions,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
    /// Completions: put the prompt in front of the output.
    pub echo: bool,
    /// Chat: `add_generation_prompt` for the template (default true).
    pub add_generation_prompt: bool,
    pub user: Option<String>,
}

/// Most alternatives per token a client may ask for.
const MAX_LOGPROBS: i64 = 20;
/// Largest `max_tokens` accepted before the context check.
const MAX_TOKENS: i64 = 1 << 30;

/// Parses a body for `api`. `chat_default_max_tokens` applies to chat
/// requests that give neither `max_tokens` nor `max_completion_tokens`.
pub fn parse_request(
    api: Api,
    body: &[u8],
    chat_default_max_tokens: usize,
) -> Result<GenParams, GatewayError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::MalformedJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(GatewayError::MalformedJson(
            "the body must be a JSON object".into(),
        ));
    };
    let mut f = Fields::new(map);
    let model = f.string("model")?;
    let input = match api {
        Api::Completions => prompt(&mut f)?,
        Api::Chat => messages(&mut f)?,
    };
    let mut o = WorkOptions::default();

    let max_tokens = match api {
        Api::Completions => f.int("max_tokens", 0, MAX_TOKENS)?.map(|n| n as usize),
        Api::Chat => {
            let mct = f.int("max_completion_tokens", 0, MAX_TOKENS)?;
            let mt = f.int("max_tokens", 0, MAX_TOKENS)?;
            mct.or(mt).map(|n| n as usize)
        }
    };
    o.max_tokens = max_tokens.unwrap_or(match api {
        Api::Completions => 16,
        Api::Chat => chat_default_max_tokens,
    });
    if let Some(t) = f.number_in("temperature", 0.0, 100.0)? {
        o.temperature = t as f32;
    }
    if let Some(p) = f.number_in("top_p", 0.0, 1.0)? {
        if p <= 0.0 {
            return Err(GatewayError::field("top_p", "must be above 0"));
        }
        o.top_p = p as f32;
    }
    if let Some(k) = f.int("top_k", -1, 1 << 20)? {
        o.top_k = k.max(0) as usize;
    }
    if let Some(m) = f.int("min_tokens", 0, MAX_TOKENS)? {
        if m as usize > o.max_tokens {
            return Err(GatewayError::field(
                "min_tokens",
                format!("{m} is more than max_tokens ({})", o.max_tokens),
            ));
        }
        o.min_tokens = m as usize;
    }
    if let Some(r) = f.number_in("repetition_penalty", 0.0, 100.0)? {
        if r <= 0.0 {
            return Err(GatewayError::field("repetition_penalty", "must be above 0"));
        }
        o.repetition_penalty = r as f32;
    }
    o.seed = f.int("seed", i64::MIN, i64::MAX)?.map(|s| s as u64);
    o.stop = f.strings("stop")?;
    if o.stop.iter().any(|s| s.is_empty()) {
        return Err(GatewayError::field(
            "stop",
            "stop strings must not be empty",
        ));
    }
    o.ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    for name in ["n", "best_of"] {
        match f.int(name, 1, 1) {
            Ok(_) => {}
            Err(GatewayError::InvalidField { .. }) => return Err(only_one(name)),
            Err(e) => return Err(e),
        }
    }
    for name in ["presence_penalty", "frequency_penalty"] {
        if let Some(x) = f.number_in(name, -2.0, 2.0)?
            && x != 0.0
        {
            tracing::warn!(field = name, value = x, "not supported yet; ignored");
        }
    }
    if let Some(v) = f.take("logit_bias") {
        if !v.is_object() {
            return Err(GatewayError::field("logit_bias", "must be an object"));
        }
        tracing::warn!(field = "logit_bias", "not supported yet; ignored");
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = stream_options(&mut f)?;
    let user = f.string("user")?;

    let mut echo = false;
    let mut add_generation_prompt = true;
    match api {
        Api::Completions => {
            o.logprobs = f.int("logprobs", 0, MAX_LOGPROBS)?.map(|n| n as usize);
            echo = f.bool("echo")?.unwrap_or(false);
            o.prompt_logprobs = echo && o.logprobs.is_some();
            if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
                return Err(GatewayError::field("suffix", "is not supported"));
            }
            if o.max_tokens == 0 && !echo {
                return Err(GatewayError::field(
                    "max_tokens",
                    "must be at least 1 (0 is allowed only with echo)",
                ));
            }
        }
        Api::Chat => {
            let want = f.bool("logprobs")?.unwrap_or(false);
            let top = f.int("top_logprobs", 0, MAX_LOGPROBS)?;
            if top.is_some() && !want {
                return Err(GatewayError::field("top_logprobs", "needs logprobs = true"));
            }
            o.logprobs = want.then(|| top.unwrap_or(0) as usize);
            add_generation_prompt = f.bool("add_generation_prompt")?.unwrap_or(true);
            if o.max_tokens == 0 {
                return Err(GatewayError::field("max_tokens", "must be at least 1"));
            }
        }
    }
    for name in f.leftover() {
        tracing::warn!(field = %name, "unknown field ignored");
    }
    Ok(GenParams {
        api,
        model,
        input,
        options: o,
        stream,
        include_usage,
        echo,
        add_generation_prompt,
        user,
    })
}

fn only_one(field: &str) -> GatewayError {
    GatewayError::field(field, "only 1 is supported")
}

fn stream_options(f: &mut Fields) -> Result<bool, GatewayError> {
    let Some(v) = f.take("stream_options") else {
        return Ok(false);
    };
    let Value::Object(m) = v else {
        return Err(GatewayError::field("stream_options", "must be an object"));
    };
    let mut so = Fields::new(m);
    let include = so
        .bool("include_usage")
        .map_err(|_| GatewayError::field("stream_options.include_usage", "must be a boolean"))?
        .unwrap_or(false);
    for name in so.leftover() {
        tracing::warn!(field = %format!("stream_options.{name}"), "unknown field ignored");
    }
    Ok(include)
}

fn token_ids(items: &[Value]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

/// `prompt`: a string, a list of one string, token ids, or a list of one
/// list of token ids.
fn prompt(f: &mut Fields) -> Result<PromptInput, GatewayError> {
    let bad = || {
        GatewayError::field(
            "prompt",
            "must be a string, a list of one string, or a list of token ids",
        )
    };
    let v = f
        .take("prompt")
        .ok_or_else(|| GatewayError::field("prompt", "is required"))?;
    let input = match v {
        Value::String(s) => PromptInput::Text(s),
        Value::Array(items) if items.is_empty() => {
            return Err(GatewayError::field("prompt", "must not be empty"));
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) | Value::Array(_) if items.len() > 1 => {
                return Err(GatewayError::field(
                    "prompt",
                    "only one prompt per request is supported",
                ));
            }
            Value::String(s) => PromptInput::Text(s.clone()),
            Value::Array(ids) => PromptInput::Tokens(token_ids(ids).ok_or_else(bad)?),
            Value::Number(_) => PromptInput::Tokens(token_ids(&items).ok_or_else(bad)?),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    if matches!(&input, PromptInput::Tokens(t) if t.is_empty()) {
        return Err(GatewayError::field("prompt", "must not be empty"));
    }
    Ok(input)
}

/// `messages`: a non-empty list of `{role, content}`; content is a string,
/// a list of `{"type": "text", "text"}` parts, or null.
fn messages(f: &mut Fields) -> Result<PromptInput, GatewayError> {
    let v = f
        .take("messages")
        .ok_or_else(|| GatewayError::field("messages", "is required"))?;
    let Value::Array(items) = v else {
        return Err(GatewayError::field(
            "messages",
            "must be a list of messages",
        ));
    };
    if items.is_empty() {
        return Err(GatewayError::field("messages", "must not be empty"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.into_iter().enumerate() {
        let field = |k: &str| format!("messages[{i}].{k}");
        let Value::Object(m) = m else {
            return Err(GatewayError::field(
                format!("messages[{i}]"),
                "must be an object",
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) if !r.is_empty() => r.clone(),
            _ => {
                return Err(GatewayError::field(
                    field("role"),
                    "must be a non-empty string",
                ));
            }
        };
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (k, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => text.push_str(t),
                        _ => {
                            return Err(GatewayError::field(
                                format!("messages[{i}].content[{k}]"),
                                "only {\"type\": \"text\", \"text\": ...} parts are supported",
                            ));
                        }
                    }
                }
                text
            }
            Some(_) => {
                return Err(GatewayError::field(
                    field("content"),
                    "must be a string or a list of text parts",
                ));
            }
        };
        out.push(ChatMessage { role, content });
    }
    Ok(PromptInput::Messages(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(api: Api, body: &str) -> Result<GenParams, GatewayError> {
        parse_request(api, body.as_bytes(), 100)
    }

    fn field_of(e: GatewayError) -> String {
        e.param().unwrap_or("<none>").to_string()
    }

    #[test]
    fn prompts_in_every_shape() {
        for (body, want) in [
            (r#"{"prompt": "hi"}"#, PromptInput::Text("hi".into())),
            (r#"{"prompt": ["hi"]}"#, PromptInput::Text("hi".into())),
            (
                r#"{"prompt": [1, 2, 3]}"#,
                PromptInput::Tokens(vec![1, 2, 3]),
            ),
            (r#"{"prompt": [[4, 5]]}"#, PromptInput::Tokens(vec![4, 5])),
        ] {
            assert_eq!(parse(Api::Completions, body).unwrap().input, want, "{body}");
        }
    }

    #[test]
    fn wrong_types_and_values_name_the_field() {
        for (body, field) in [
            (r#"{"prompt": 3}"#, "prompt"),
            (r#"{"prompt": []}"#, "prompt"),
            (r#"{"prompt": ["a", "b"]}"#, "prompt"),
            (r#"{"prompt": [1, -2]}"#, "prompt"),
            (r#"{"prompt": "x", "max_tokens": "ten"}"#, "max_tokens"),
            (r#"{"prompt": "x", "max_tokens": -1}"#, "max_tokens"),
            (r#"{"prompt": "x", "temperature": "hot"}"#, "temperature"),
            (r#"{"prompt": "x", "top_p": 0}"#, "top_p"),
            (r#"{"prompt": "x", "n": 2}"#, "n"),
            (r#"{"prompt": "x", "stream": "yes"}"#, "stream"),
            (r#"{"prompt": "x", "stop": [1]}"#, "stop"),
            (r#"{"prompt": "x", "logprobs": true}"#, "logprobs"),
            (r#"{"prompt": "x", "logprobs": 99}"#, "logprobs"),
            (r#"{"prompt": "x", "seed": 1.5}"#, "seed"),
            (
                r#"{"prompt": "x", "stream_options": {"include_usage": 1}}"#,
                "stream_options.include_usage",
            ),
            (r#"{"prompt": "x", "model": 7}"#, "model"),
            (
                r#"{"prompt": "x", "min_tokens": 50, "max_tokens": 5}"#,
                "min_tokens",
            ),
            (r#"{}"#, "prompt"),
        ] {
            let e = parse(Api::Completions, body).unwrap_err();
            assert_eq!(field_of(e.clone()), field, "{body}: {e}");
            assert!(e.to_string().contains(field), "{e}");
        }
        for (body, field) in [
            (r#"{"messages": "hi"}"#, "messages"),
            (r#"{"messages": []}"#, "messages"),
            (r#"{"messages": [{"content": "x"}]}"#, "messages[0].role"),
            (
                r#"{"messages": [{"role": "user", "content": 5}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#,
                "top_logprobs",
            ),
        ] {
            let e = parse(Api::Chat, body).unwrap_err();
            assert_eq!(field_of(e), field, "{body}");
        }
    }

    #[test]
    fn not_json_is_malformed() {
        for body in ["{", "[1]", "", "nul"] {
            assert!(matches!(
                parse(Api::Completions, body),
                Err(GatewayError::MalformedJson(_))
            ));
        }
    }

    #[test]
    fn options_and_unknown_fields() {
        let p = parse(
            Api::Completions,
            r#"{"prompt": "x", "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": -1,
                "seed": 3, "stop": "\n", "logprobs": 2, "echo": true, "ignore_eos": true,
                "min_tokens": 2, "repetition_penalty": 1.1, "stream": true,
                "stream_options": {"include_usage": true}, "user": "u", "null_field": null,
                "some_vllm_thing": {"a": 1}}"#,
        )
        .unwrap();
        let o = &p.options;
        assert_eq!(
            (o.max_tokens, o.min_tokens, o.top_k, o.seed),
            (7, 2, 0, Some(3))
        );
        assert_eq!(o.stop, vec!["\n".to_string()]);
        assert_eq!(o.logprobs, Some(2));
        assert!(o.prompt_logprobs && o.ignore_eos && p.echo && p.stream && p.include_usage);

        let c = parse(
            Api::Chat,
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "max_completion_tokens": 9, "max_tokens": 3, "logprobs": true, "top_logprobs": 2}"#,
        )
        .unwrap();
        assert_eq!(c.options.max_tokens, 9);
        assert_eq!(c.options.logprobs, Some(2));
        assert_eq!(
            c.input,
            PromptInput::Messages(vec![ChatMessage {
                role: "user".into(),
                content: "ab".into()
            }])
        );
        let d = parse(
            Api::Chat,
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
        )
        .unwrap();
        assert_eq!(d.options.max_tokens, 100);
    }
}
