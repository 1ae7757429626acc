//! Reading an OpenAI-style stream: `data: {json}` lines, `data: [DONE]` last.
//!
//! Only standard fields are read: `choices[].text` (completions) or
//! `choices[].delta.content` (chat) for tokens, `usage` for token counts,
//! and `usage.cake.class` when the server adds it.

use std::borrow::Cow;

use serde::Deserialize;

#[derive(Deserialize)]
struct ChunkMsg<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
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
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    cake: Option<CakeUsage>,
}

#[derive(Deserialize)]
struct CakeUsage {
    #[serde(default)]
    class: Option<String>,
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
    /// `data: [DONE]` seen.
    pub done: bool,
    /// An `error` object or unparsable data arrived.
    pub error: bool,
}

/// Incremental SSE reader: feed it body frames as they come.
#[derive(Debug, Default)]
pub(crate) struct SseReader {
    buf: Vec<u8>,
    /// What has been read.
    pub state: StreamState,
}

impl SseReader {
    /// Consumes a body frame; returns how many token-bearing events it
    /// completed (so the caller can stamp the first token's time).
    pub(crate) fn feed(&mut self, data: &[u8]) -> u32 {
        let before = self.state.token_events;
        self.buf.extend_from_slice(data);
        let mut consumed = 0;
        while let Some(nl) = self.buf[consumed..].iter().position(|&b| b == b'\n') {
            let end = consumed + nl;
            let line = &self.buf[consumed..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Self::line(&mut self.state, line);
            consumed = end + 1;
        }
        self.buf.drain(..consumed);
        self.state.token_events - before
    }

    /// Call at the end of the body: a last line without a newline counts.
    pub(crate) fn finish(&mut self) -> u32 {
        let before = self.state.token_events;
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            Self::line(&mut self.state, &line);
        }
        self.state.token_events - before
    }

    fn line(state: &mut StreamState, line: &[u8]) {
        let Some(payload) = line.strip_prefix(b"data:") else {
            return; // blank separators, `event:`, `id:`, `:` comments
        };
        let payload = payload.trim_ascii();
        if payload == b"[DONE]" {
            state.done = true;
            return;
        }
        let Ok(msg) = serde_json::from_slice::<ChunkMsg<'_>>(payload) else {
            state.error = true;
            return;
        };
        if msg.error.is_some() {
            state.error = true;
        }
        let has_token = msg.choices.iter().any(|c| {
            c.text.as_deref().is_some_and(|t| !t.is_empty())
                || c.delta
                    .as_ref()
                    .and_then(|d| d.content.as_deref())
                    .is_some_and(|t| !t.is_empty())
        });
        if has_token {
            state.token_events += 1;
        }
        if let Some(u) = msg.usage {
            state.prompt_tokens = u.prompt_tokens.or(state.prompt_tokens);
            state.completion_tokens = u.completion_tokens.or(state.completion_tokens);
            if let Some(class) = u.cake.and_then(|c| c.class) {
                state.class = Some(class);
            }
        }
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
            let n = r.feed(&body[..split]) + r.feed(&body[split..]) + r.finish();
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
        let n = r.feed(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        );
        assert_eq!(n, 0);
        let n = r.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]");
        assert_eq!(n, 1);
        r.finish();
        assert!(r.state.done);
        assert_eq!(r.state.class, None);
    }

    #[test]
    fn error_events_and_garbage_are_errors() {
        let mut r = SseReader::default();
        r.feed(b"data: {\"error\":{\"message\":\"boom\"}}\n");
        assert!(r.state.error);
        let mut r = SseReader::default();
        r.feed(b"data: not json\n");
        assert!(r.state.error);
    }
}
