//! The typed request bodies: the prompt ([`Prompt`], [`ChatMessages`]),
//! the fields both endpoints share ([`Common`]) and each endpoint's other
//! own fields ([`Completion`], [`Chat`]). A body is read into three of
//! them from one parsed `serde_json::Value` (no `#[serde(flatten)]`, which
//! hides both the paths and the ignored fields), each through
//! `serde_path_to_error` (errors name the field) around `serde_ignored`
//! (fields no struct knows are logged). Ranges and cross-field rules are
//! checked afterwards, in `request::validate`.

use std::fmt::Formatter;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::Value;

use super::de::{self, Obj, refuse};
use crate::error::GatewayError;

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

/// Fields of both `/v1/completions` and `/v1/chat/completions`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Common {
    #[serde(deserialize_with = "de::string")]
    pub model: Option<String>,
    #[serde(deserialize_with = "de::integer")]
    pub max_tokens: Option<i64>,
    #[serde(deserialize_with = "de::number")]
    pub temperature: Option<f64>,
    #[serde(deserialize_with = "de::number")]
    pub top_p: Option<f64>,
    #[serde(deserialize_with = "de::integer")]
    pub top_k: Option<i64>,
    #[serde(deserialize_with = "de::integer")]
    pub min_tokens: Option<i64>,
    #[serde(deserialize_with = "de::number")]
    pub repetition_penalty: Option<f64>,
    #[serde(deserialize_with = "de::integer")]
    pub seed: Option<i64>,
    #[serde(deserialize_with = "de::strings")]
    pub stop: Vec<String>,
    #[serde(deserialize_with = "de::boolean")]
    pub ignore_eos: Option<bool>,
    /// Any value: everything but 1 is "only 1 is supported".
    pub n: Option<Value>,
    pub best_of: Option<Value>,
    #[serde(deserialize_with = "de::number")]
    pub presence_penalty: Option<f64>,
    #[serde(deserialize_with = "de::number")]
    pub frequency_penalty: Option<f64>,
    #[serde(deserialize_with = "de::object")]
    pub logit_bias: Option<Value>,
    #[serde(deserialize_with = "de::boolean")]
    pub stream: Option<bool>,
    pub stream_options: Option<Obj<StreamOptions>>,
    #[serde(deserialize_with = "de::string")]
    pub user: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(crate) struct StreamOptions {
    #[serde(deserialize_with = "include_usage")]
    pub include_usage: Option<bool>,
}

fn include_usage<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match de::present(d)? {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(serde::de::Error::custom("must be a boolean")),
    }
}

/// `/v1/completions`' prompt, read (and checked) before anything else.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Prompt {
    #[serde(deserialize_with = "prompt")]
    pub prompt: Option<PromptInput>,
}

/// `/v1/chat/completions`' messages, read (and checked) before anything
/// else.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(crate) struct ChatMessages {
    pub messages: Option<Messages>,
}

/// `/v1/completions`' other fields of its own.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Completion {
    #[serde(deserialize_with = "de::integer")]
    pub logprobs: Option<i64>,
    #[serde(deserialize_with = "de::boolean")]
    pub echo: Option<bool>,
    #[serde(deserialize_with = "de::string")]
    pub suffix: Option<String>,
}

/// `/v1/chat/completions`' other fields of its own.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Chat {
    #[serde(deserialize_with = "de::integer")]
    pub max_completion_tokens: Option<i64>,
    #[serde(deserialize_with = "de::boolean")]
    pub logprobs: Option<bool>,
    #[serde(deserialize_with = "de::integer")]
    pub top_logprobs: Option<i64>,
    #[serde(deserialize_with = "de::boolean")]
    pub add_generation_prompt: Option<bool>,
}

/// `messages`: a list of message objects (emptiness is checked later).
#[derive(Debug, Default)]
pub(crate) struct Messages(pub Vec<Message>);

/// One message; a missing role is reported by `validate`, with its index.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Message {
    #[serde(deserialize_with = "role")]
    pub role: Option<String>,
    pub content: Option<Content>,
}

pub(crate) const ROLE: &str = "must be a non-empty string";

fn role<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match de::present(d)? {
        None => Ok(None),
        Some(Value::String(r)) if !r.is_empty() => Ok(Some(r)),
        Some(_) => Err(serde::de::Error::custom(ROLE)),
    }
}

/// `content`: a string or a list of `{"type": "text", "text"}` parts,
/// joined.
#[derive(Debug, Default)]
pub(crate) struct Content(pub String);

/// One content part, its text.
struct Part(String);

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Messages, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;
            fn expecting(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut out = Vec::new();
                while let Some(Obj(m)) = seq.next_element::<Obj<Message>>()? {
                    out.push(m);
                }
                Ok(Messages(out))
            }
            refuse!('de, "must be a list of messages"; bool, number, str, unit, map);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Content, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of text parts")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Content, E> {
                Ok(Content(s.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Content, E> {
                Ok(Content(s))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Content, E> {
                Ok(Content(String::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut text = String::new();
                while let Some(Part(t)) = seq.next_element()? {
                    text.push_str(&t);
                }
                Ok(Content(text))
            }
            refuse!('de, "must be a string or a list of text parts"; bool, number, map);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Part {
    /// Whatever else a part holds is not looked at (as before: parts are
    /// not checked for unknown fields).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Part, D::Error> {
        let v = Value::deserialize(d)?;
        match (v.get("type").and_then(Value::as_str), v.get("text")) {
            (Some("text"), Some(Value::String(t))) => Ok(Part(t.clone())),
            _ => Err(serde::de::Error::custom(
                "only {\"type\": \"text\", \"text\": ...} parts are supported",
            )),
        }
    }
}

fn token_ids(items: &[Value]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

/// `prompt`: a string, a list of one string, token ids, or a list of one
/// list of token ids.
fn prompt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PromptInput>, D::Error> {
    use serde::de::Error;
    let bad = || D::Error::custom("must be a string, a list of one string, or a list of token ids");
    let empty = || D::Error::custom("must not be empty");
    let Some(v) = de::present(d)? else {
        return Ok(None);
    };
    let input = match v {
        Value::String(s) => PromptInput::Text(s),
        Value::Array(items) if items.is_empty() => return Err(empty()),
        Value::Array(mut items) => match &items[0] {
            Value::String(_) | Value::Array(_) if items.len() > 1 => {
                return Err(D::Error::custom("only one prompt per request is supported"));
            }
            Value::String(_) => match items.swap_remove(0) {
                Value::String(s) => PromptInput::Text(s),
                _ => return Err(bad()),
            },
            Value::Array(ids) => PromptInput::Tokens(token_ids(ids).ok_or_else(bad)?),
            Value::Number(_) => PromptInput::Tokens(token_ids(&items).ok_or_else(bad)?),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    if matches!(&input, PromptInput::Tokens(t) if t.is_empty()) {
        return Err(empty());
    }
    Ok(Some(input))
}

/// Reads `T` from `value`: a wrong field is an error naming it
/// (`messages[0].content`); every field `T` did not take is pushed to
/// `ignored` as a path (`stream_options.x`, `messages[1].name`).
pub(crate) fn read<'de, T, D>(value: D, ignored: &mut Vec<Ignored>) -> Result<T, GatewayError>
where
    T: Deserialize<'de>,
    D: Deserializer<'de, Error = serde_json::Error>,
{
    let mut note = |path: serde_ignored::Path<'_>| ignored.push(Ignored::of(&path));
    let de = serde_ignored::Deserializer::new(value, &mut note);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = field_name(e.path());
        GatewayError::field(field, e.into_inner().to_string())
    })
}

/// A field no struct took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ignored {
    /// As the API names fields: `messages[0].name`.
    pub name: String,
    /// A key of the body itself (one of the two structs may know it).
    pub top_level: bool,
}

impl Ignored {
    fn of(path: &serde_ignored::Path<'_>) -> Ignored {
        use serde_ignored::Path as P;
        fn write(p: &P<'_>, out: &mut String) {
            match p {
                P::Root => {}
                P::Seq { parent, index } => {
                    write(parent, out);
                    out.push_str(&format!("[{index}]"));
                }
                P::Map { parent, key } => {
                    write(parent, out);
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                    write(parent, out)
                }
            }
        }
        let mut name = String::new();
        write(path, &mut name);
        let top_level = matches!(path, P::Map { parent, .. } if matches!(parent, P::Root));
        Ignored { name, top_level }
    }
}

fn field_name(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}
