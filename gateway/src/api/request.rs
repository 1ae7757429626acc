//! Parsing and validating `/v1/completions` and `/v1/chat/completions`
//! bodies. The body is read into typed structs (`body`); known fields with
//! a wrong type or value are errors naming the field, unknown fields are
//! logged and ignored (clients of vLLM-style servers send many), and
//! [`validate`] checks ranges and the rules between fields.

use cake_engine::worker::WorkOptions;
use serde_json::Value;

use super::body::{
    self, Chat, ChatMessage, ChatMessages, Common, Completion, Ignored, Prompt, PromptInput,
};
use super::de::as_integer;
use crate::error::GatewayError;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Completions,
    Chat,
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
    if !value.is_object() {
        return Err(GatewayError::MalformedJson(
            "the body must be a JSON object".into(),
        ));
    }
    let (params, unknown) = parse(api, value, chat_default_max_tokens)?;
    for name in unknown {
        tracing::warn!(field = %name, "unknown field ignored");
    }
    Ok(params)
}

/// The request, and the fields no struct knows. The prompt is read and
/// checked first, as a body sent to the wrong endpoint lacks it; then the
/// fields both endpoints share, then the endpoint's others. Each struct
/// ignores the others' fields, so a key of the body is unknown only when
/// all of them did.
fn parse(
    api: Api,
    value: Value,
    chat_default_max_tokens: usize,
) -> Result<(GenParams, Vec<String>), GatewayError> {
    let mut ignored: [Vec<Ignored>; 3] = Default::default();
    let [a, b, c] = &mut ignored;
    let input = match api {
        Api::Completions => match body::read::<Prompt, _>(&value, a)?.prompt {
            Some(input) => input,
            None => return Err(GatewayError::field("prompt", "is required")),
        },
        Api::Chat => messages(body::read(&value, a)?)?,
    };
    let own = match api {
        Api::Completions => Own::Completion(body::read(&value, b)?),
        Api::Chat => Own::Chat(body::read(&value, b)?),
    };
    let common: Common = body::read(value, c)?;
    let unknown = unknown(&ignored);
    Ok((
        validate(api, common, own, input, chat_default_max_tokens)?,
        unknown,
    ))
}

/// The endpoint's own fields besides the prompt.
#[derive(Debug)]
enum Own {
    Completion(Completion),
    Chat(Chat),
}

/// The fields no struct took: nested ones (only the struct that knows
/// their parent looks inside it), and keys of the body that all ignored.
fn unknown(sets: &[Vec<Ignored>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in sets.iter().flatten() {
        let everywhere = sets.iter().all(|s| s.contains(i));
        if (!i.top_level || everywhere) && !out.contains(&i.name) {
            out.push(i.name.clone());
        }
    }
    out
}

fn int_in(field: &str, v: Option<i64>, min: i64, max: i64) -> Result<Option<i64>, GatewayError> {
    match v {
        Some(n) if n < min || n > max => Err(GatewayError::field(
            field,
            format!("{n} is out of range: must be from {min} to {max}"),
        )),
        v => Ok(v),
    }
}

fn number_in(field: &str, v: Option<f64>, min: f64, max: f64) -> Result<Option<f64>, GatewayError> {
    match v {
        Some(x) if !(x >= min && x <= max) => Err(GatewayError::field(
            field,
            format!("{x} is out of range: must be from {min} to {max}"),
        )),
        x => Ok(x),
    }
}

fn only_one(field: &str) -> GatewayError {
    GatewayError::field(field, "only 1 is supported")
}

/// The ranges and the rules between fields, in a fixed order; the
/// defaults for what was left out.
fn validate(
    api: Api,
    c: Common,
    own: Own,
    input: PromptInput,
    chat_default_max_tokens: usize,
) -> Result<GenParams, GatewayError> {
    let mut o = WorkOptions::default();
    let max_tokens = match &own {
        Own::Completion(_) => int_in("max_tokens", c.max_tokens, 0, MAX_TOKENS)?,
        Own::Chat(ch) => {
            let mct = int_in(
                "max_completion_tokens",
                ch.max_completion_tokens,
                0,
                MAX_TOKENS,
            )?;
            let mt = int_in("max_tokens", c.max_tokens, 0, MAX_TOKENS)?;
            mct.or(mt)
        }
    };
    o.max_tokens = match (max_tokens, api) {
        (Some(n), _) => n as usize,
        (None, Api::Completions) => 16,
        (None, Api::Chat) => chat_default_max_tokens,
    };
    if let Some(t) = number_in("temperature", c.temperature, 0.0, 100.0)? {
        o.temperature = t as f32;
    }
    if let Some(p) = number_in("top_p", c.top_p, 0.0, 1.0)? {
        if p <= 0.0 {
            return Err(GatewayError::field("top_p", "must be above 0"));
        }
        o.top_p = p as f32;
    }
    if let Some(k) = int_in("top_k", c.top_k, -1, 1 << 20)? {
        o.top_k = k.max(0) as usize;
    }
    if let Some(m) = int_in("min_tokens", c.min_tokens, 0, MAX_TOKENS)? {
        if m as usize > o.max_tokens {
            return Err(GatewayError::field(
                "min_tokens",
                format!("{m} is more than max_tokens ({})", o.max_tokens),
            ));
        }
        o.min_tokens = m as usize;
    }
    if let Some(r) = number_in("repetition_penalty", c.repetition_penalty, 0.0, 100.0)? {
        if r <= 0.0 {
            return Err(GatewayError::field("repetition_penalty", "must be above 0"));
        }
        o.repetition_penalty = r as f32;
    }
    o.seed = c.seed.map(|s| s as u64);
    o.stop = c.stop;
    if o.stop.iter().any(|s| s.is_empty()) {
        return Err(GatewayError::field(
            "stop",
            "stop strings must not be empty",
        ));
    }
    o.ignore_eos = c.ignore_eos.unwrap_or(false);
    for (name, v) in [("n", &c.n), ("best_of", &c.best_of)] {
        if v.as_ref().is_some_and(|v| as_integer(v) != Some(1)) {
            return Err(only_one(name));
        }
    }
    for (name, v) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if let Some(x) = number_in(name, v, -2.0, 2.0)?
            && x != 0.0
        {
            tracing::warn!(field = name, value = x, "not supported yet; ignored");
        }
    }
    if c.logit_bias.is_some() {
        tracing::warn!(field = "logit_bias", "not supported yet; ignored");
    }
    let stream = c.stream.unwrap_or(false);
    let include_usage = c
        .stream_options
        .and_then(|so| so.0.include_usage)
        .unwrap_or(false);

    let mut echo = false;
    let mut add_generation_prompt = true;
    match own {
        Own::Completion(p) => {
            o.logprobs = int_in("logprobs", p.logprobs, 0, MAX_LOGPROBS)?.map(|n| n as usize);
            echo = p.echo.unwrap_or(false);
            o.prompt_logprobs = echo && o.logprobs.is_some();
            if p.suffix.is_some_and(|s| !s.is_empty()) {
                return Err(GatewayError::field("suffix", "is not supported"));
            }
            if o.max_tokens == 0 && !echo {
                return Err(GatewayError::field(
                    "max_tokens",
                    "must be at least 1 (0 is allowed only with echo)",
                ));
            }
        }
        Own::Chat(ch) => {
            let want = ch.logprobs.unwrap_or(false);
            let top = int_in("top_logprobs", ch.top_logprobs, 0, MAX_LOGPROBS)?;
            if top.is_some() && !want {
                return Err(GatewayError::field("top_logprobs", "needs logprobs = true"));
            }
            o.logprobs = want.then(|| top.unwrap_or(0) as usize);
            add_generation_prompt = ch.add_generation_prompt.unwrap_or(true);
            if o.max_tokens == 0 {
                return Err(GatewayError::field("max_tokens", "must be at least 1"));
            }
        }
    }
    Ok(GenParams {
        api,
        model: c.model,
        input,
        options: o,
        stream,
        include_usage,
        echo,
        add_generation_prompt,
        user: c.user,
    })
}

/// `messages`: required, not empty, every message with a role.
fn messages(ch: ChatMessages) -> Result<PromptInput, GatewayError> {
    let Some(ms) = ch.messages else {
        return Err(GatewayError::field("messages", "is required"));
    };
    if ms.0.is_empty() {
        return Err(GatewayError::field("messages", "must not be empty"));
    }
    ms.0.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let Some(role) = m.role else {
                return Err(GatewayError::field(
                    format!("messages[{i}].role"),
                    body::ROLE,
                ));
            };
            Ok(ChatMessage {
                role,
                content: m.content.map(|c| c.0).unwrap_or_default(),
            })
        })
        .collect::<Result<_, _>>()
        .map(PromptInput::Messages)
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

    fn unknown_of(api: Api, body: &str) -> Vec<String> {
        let value = serde_json::from_str(body).unwrap();
        let mut names = super::parse(api, value, 100).unwrap().1;
        names.sort();
        names
    }

    #[test]
    fn unknown_fields_are_named_as_the_api_names_them() {
        assert_eq!(
            unknown_of(
                Api::Completions,
                r#"{"prompt": "x", "max_tokens": 2, "guided_json": {"a": 1}, "null_field": null,
                    "stream_options": {"include_usage": true, "extra": 1}, "messages": []}"#
            ),
            [
                "guided_json",
                "messages",
                "null_field",
                "stream_options.extra"
            ]
        );
        assert_eq!(
            unknown_of(
                Api::Chat,
                r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]},
                                 {"role": "user", "content": "b", "name": "bob"}],
                    "echo": true, "top_p": 0.5, "logprobs": false}"#
            ),
            ["echo", "messages[1].name"]
        );
        assert!(unknown_of(Api::Chat, r#"{"messages": [{"role": "u"}], "n": 1}"#).is_empty());
    }

    #[test]
    fn nested_errors_name_the_path() {
        for (body, field, message) in [
            (
                r#"{"messages": [{"role": "u", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}]}"#,
                "messages[0].content[1]",
                "only {\"type\": \"text\", \"text\": ...} parts are supported",
            ),
            (
                r#"{"messages": [{"role": "u"}, {"role": 5}]}"#,
                "messages[1].role",
                "must be a non-empty string",
            ),
            (
                r#"{"messages": [{"role": "u"}, {"content": "x"}]}"#,
                "messages[1].role",
                "must be a non-empty string",
            ),
            (
                r#"{"messages": [{"role": "u"}, ["user", "x"]]}"#,
                "messages[1]",
                "must be an object",
            ),
            (
                r#"{"messages": [{"role": "u"}], "stream_options": []}"#,
                "stream_options",
                "must be an object",
            ),
            (
                r#"{"messages": [{"role": "u"}], "stop": ["a", 1]}"#,
                "stop",
                "must be a string or a list of strings, not a number",
            ),
        ] {
            let e = parse(Api::Chat, body).unwrap_err();
            assert_eq!(field_of(e.clone()), field, "{body}");
            assert_eq!(e.to_string(), format!("`{field}`: {message}"), "{body}");
        }
        // A chat body sent to /v1/completions is told about the prompt.
        let e = parse(
            Api::Completions,
            r#"{"messages": [{"role": "u"}], "logprobs": true}"#,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "`prompt`: is required");
    }
}
