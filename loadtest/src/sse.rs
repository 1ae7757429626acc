//! Reading an OpenAI-style stream: `data: {json}` events, `data: [DONE]`
//! last. The SSE framing (split chunks, CRLF, comments, multi-line data)
//! is `eventsource-stream`'s; this reads each event's data.
//!
//! Only standard fields are read: `choices[].text` (completions) or
//! `choices[].delta.content` (chat) for tokens, `usage` for token counts
//! and `usage.prompt_tokens_details.cached_tokens`, and the `usage.cake`
//! extension (`class`, `computed_tokens`, `shared_tokens`) when the server
//! adds it. A usage field that is missing or of an unexpected type is
//! ignored: usage describes a request, it never fails one.

use std::borrow::Cow;

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Reads a field as `T`, or as absent when it has another shape.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(T::deserialize(v).ok())
}

#[derive(Deserialize)]
struct ChunkMsg<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<UsageMsg>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UsageMsg {
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default, deserialize_with = "lenient")]
    cake: Option<CakeUsage>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default, deserialize_with = "lenient")]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CakeUsage {
    #[serde(default, deserialize_with = "lenient")]
    class: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    computed_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    shared_tokens: Option<u64>,
}

/// What the stream said so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct StreamState {
    /// Events that carried at least one token of text.
    pub token_events: u32,
    /// `usage.prompt_tokens`, when sent.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens`, when sent.
    pub completion_tokens: Option<u64>,
    /// `usage.cake.class`, when sent.
    pub class: Option<String>,
    /// `usage.prompt_tokens_details.cached_tokens`, when sent.
    pub cached_tokens: Option<u64>,
    /// `usage.cake.computed_tokens`, when sent.
    pub computed_tokens: Option<u64>,
    /// `usage.cake.shared_tokens`, when sent.
    pub shared_tokens: Option<u64>,
    /// The generated text, when the reader keeps it.
    pub text: Option<String>,
    /// `data: [DONE]` seen.
    pub done: bool,
    /// An `error` object or unparsable data arrived.
    pub error: bool,
}

/// Reads a stream's events into [`StreamState`].
#[derive(Debug, Default)]
pub(crate) struct SseReader {
    /// What has been read.
    pub state: StreamState,
}

impl SseReader {
    /// A reader that also keeps the generated text (closed loops append it
    /// to the next request); others skip the copy.
    pub(crate) fn keeping_text() -> Self {
        SseReader {
            state: StreamState {
                text: Some(String::new()),
                ..StreamState::default()
            },
        }
    }

    /// Reads a body's events until `[DONE]`, an error or the end (a last
    /// event without its blank line counts), calling `on_token` as each
    /// token-bearing event completes (so the caller can stamp the first
    /// token's time). A stream that is not UTF-8 or SSE is a stream error
    /// in the state; `Err` when the body itself broke.
    pub(crate) async fn read<S, E>(&mut self, body: S, mut on_token: impl FnMut()) -> Result<(), E>
    where
        S: Stream<Item = Result<Bytes, E>>,
    {
        let end = futures::stream::iter([Ok(Bytes::from_static(b"\n\n"))]);
        let mut events = std::pin::pin!(body.chain(end).eventsource());
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => {
                    if Self::data(&mut self.state, ev.data.as_bytes()) {
                        on_token();
                    }
                    if self.state.done {
                        break;
                    }
                }
                Err(EventStreamError::Transport(e)) => return Err(e),
                Err(EventStreamError::Utf8(_) | EventStreamError::Parser(_)) => {
                    self.state.error = true;
                    break;
                }
            }
        }
        Ok(())
    }

    /// Reads a whole body given as chunks; the count of token-bearing
    /// events.
    #[cfg(test)]
    pub(crate) fn read_all(&mut self, chunks: &[&[u8]]) -> u32 {
        let body = futures::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let mut n = 0;
        let r = futures::executor::block_on(self.read(body, || n += 1));
        assert!(r.is_ok());
        n
    }

    /// One event's data; whether it carried a token.
    fn data(state: &mut StreamState, payload: &[u8]) -> bool {
        let payload = payload.trim_ascii();
        if payload == b"[DONE]" {
            state.done = true;
            return false;
        }
        let Ok(msg) = serde_json::from_slice::<ChunkMsg<'_>>(payload) else {
            state.error = true;
            return false;
        };
        if msg.error.is_some() {
            state.error = true;
        }
        let mut has_token = false;
        for c in &msg.choices {
            let piece = c
                .text
                .as_deref()
                .or_else(|| c.delta.as_ref().and_then(|d| d.content.as_deref()));
            if let Some(t) = piece.filter(|t| !t.is_empty()) {
                has_token = true;
                if let Some(text) = &mut state.text {
                    text.push_str(t);
                }
            }
        }
        if has_token {
            state.token_events += 1;
        }
        if let Some(u) = msg.usage {
            state.prompt_tokens = u.prompt_tokens.or(state.prompt_tokens);
            state.completion_tokens = u.completion_tokens.or(state.completion_tokens);
            let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens);
            state.cached_tokens = cached.or(state.cached_tokens);
            if let Some(cake) = u.cake {
                state.class = cake.class.or(state.class.take());
                state.computed_tokens = cake.computed_tokens.or(state.computed_tokens);
                state.shared_tokens = cake.shared_tokens.or(state.shared_tokens);
            }
        }
        has_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_stream_split_anywhere() {
        let body = concat!(
            "data: {\"choices\":[{\"text\":\"Hel\"}]}\n\n",
            "data: {\"choices\":[{\"text\":\"lo\"}]}\r\n\r\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,",
            "\"cake\":{\"class\":\"cached\",\"loaded_tokens\":5}}}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        for split in 0..body.len() {
            let mut r = SseReader::default();
            let n = r.read_all(&[&body[..split], &body[split..]]);
            assert_eq!(n, 2, "split at {split}");
            assert_eq!(r.state.completion_tokens, Some(2));
            assert_eq!(r.state.prompt_tokens, Some(7));
            assert_eq!(r.state.class.as_deref(), Some("cached"));
            assert!(r.state.done && !r.state.error);
        }
    }

    #[test]
    fn chat_role_only_chunk_is_not_a_token() {
        let mut r = SseReader::default();
        let n = r.read_all(&[
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]",
        ]);
        assert_eq!(n, 1);
        assert!(r.state.done);
        assert_eq!(r.state.class, None);
    }

    #[test]
    fn reuse_fields_and_text_are_read() {
        let mut r = SseReader::keeping_text();
        r.read_all(&[concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo \\\"x\\\"\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":2,",
            "\"total_tokens\":102,\"prompt_tokens_details\":{\"cached_tokens\":64},",
            "\"cake\":{\"class\":\"cached\",\"loaded_tokens\":48,\"computed_tokens\":36,",
            "\"shared_tokens\":16,\"ttft_ms\":12.5,\"worker\":\"w0\"}}}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes()]);
        let s = &r.state;
        assert_eq!(s.text.as_deref(), Some("Hello \"x\""));
        assert_eq!(
            (
                s.prompt_tokens,
                s.cached_tokens,
                s.computed_tokens,
                s.shared_tokens
            ),
            (Some(100), Some(64), Some(36), Some(16))
        );
        assert_eq!(s.class.as_deref(), Some("cached"));
        assert!(s.done && !s.error);
        // Without keeping text, none is copied.
        assert_eq!(SseReader::default().state.text, None);
    }

    #[test]
    fn odd_usage_fields_never_fail_the_request() {
        let mut r = SseReader::default();
        r.read_all(&[concat!(
            "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":\"many\",",
            "\"completion_tokens\":1,\"prompt_tokens_details\":null,",
            "\"cake\":{\"computed_tokens\":-3,\"class\":7}}}\n\n",
            "data: {\"choices\":[],\"usage\":\"none\"}\n\n",
        )
        .as_bytes()]);
        let s = &r.state;
        assert!(!s.error);
        assert_eq!(s.token_events, 1);
        assert_eq!((s.prompt_tokens, s.completion_tokens), (None, Some(1)));
        assert_eq!(
            (s.cached_tokens, s.computed_tokens, s.class.as_deref()),
            (None, None, None)
        );
    }

    #[test]
    fn error_events_and_garbage_are_errors() {
        let mut r = SseReader::default();
        r.read_all(&[b"data: {\"error\":{\"message\":\"boom\"}}\n\n"]);
        assert!(r.state.error);
        let mut r = SseReader::default();
        r.read_all(&[b"data: not json\n\n"]);
        assert!(r.state.error);
        let mut r = SseReader::default();
        r.read_all(&[b"data: \xff\n\n"]);
        assert!(r.state.error);
    }

    #[test]
    fn crlf_multi_line_data_and_a_broken_body() {
        let mut r = SseReader::default();
        let n = r.read_all(&[
            b"data: {\"choices\":\r\ndata: [{\"text\":\"a\"}]}\r\n\r\n",
            b"data: [DONE]\r\n\r\n",
        ]);
        assert_eq!(n, 1);
        assert!(r.state.done && !r.state.error);
        let body = futures::stream::iter([Ok(Bytes::from_static(b"data: {\"cho")), Err("reset")]);
        let mut r = SseReader::default();
        let got = futures::executor::block_on(r.read(body, || {}));
        assert_eq!(got, Err("reset"));
    }
}
