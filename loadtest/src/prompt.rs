//! Turning a [`PromptSpec`] into prompt content, deterministically from the
//! workload's seed.
//!
//! Content is drawn as token ids; `text` format renders each id as a word
//! from a fixed made-up vocabulary, so "N tokens" in a text workload means N
//! words (roughly 1–2 tokens each for a BPE tokenizer). Shared documents are
//! generated once; everything else is regenerated per request (a fan-out
//! wave's document too: it is used by one wave only).

use crate::plan::{PromptSpec, sample, streams};
use crate::rng::Rng;
use crate::workload::{PromptFormat, Workload};

/// Words in the made-up vocabulary.
const WORDS: usize = 4096;

/// One message of a chat prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub role: &'static str,
    pub content: String,
}

/// A prompt ready to put in a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Chat(Vec<Message>),
}

/// Segments of a prompt before rendering: (role, token ids).
type Segments = Vec<(&'static str, Vec<u32>)>;

/// Everything needed to build any request's prompt.
#[derive(Debug)]
pub(crate) struct PromptBook {
    seed: u64,
    format: PromptFormat,
    lo: u32,
    hi: u32,
    documents: Vec<Vec<u32>>,
    words: Vec<String>,
    conversation: crate::workload::Conversation,
    fanout: crate::workload::Fanout,
    output: crate::workload::Output,
}

fn make_words() -> Vec<String> {
    const CONS: &[u8] = b"bdfghklmnprstvwz";
    const VOWELS: &[u8] = b"aeiou";
    let syllables: Vec<[u8; 2]> = CONS
        .iter()
        .flat_map(|&c| VOWELS.iter().map(move |&v| [c, v]))
        .collect();
    let n = syllables.len();
    (0..WORDS)
        .map(|i| {
            let count = 1 + i % 3;
            let mut x = i / 3 + i;
            let mut w = String::with_capacity(count * 2);
            for _ in 0..count {
                let s = syllables[x % n];
                w.push(char::from(s[0]));
                w.push(char::from(s[1]));
                x /= n;
                x += 7;
            }
            w
        })
        .collect()
}

impl PromptBook {
    /// Generates the shared documents of a validated workload.
    pub(crate) fn new(w: &Workload) -> Self {
        let (lo, hi) = match w.prompt_format {
            PromptFormat::Tokens => (w.first_token_id, w.vocab_size - 1),
            PromptFormat::Text => (0, WORDS as u32 - 1),
        };
        let mut book = PromptBook {
            seed: w.seed,
            format: w.prompt_format,
            lo,
            hi,
            documents: Vec::new(),
            words: make_words(),
            conversation: w.conversation.clone(),
            fanout: w.fanout.clone().unwrap_or_default(),
            output: w.output.clone(),
        };
        if w.mix.shared_prefix > 0.0 {
            book.documents = (0..w.shared_prefix.documents)
                .map(|d| {
                    let mut rng = Rng::new(w.seed, streams::DOCUMENT, u64::from(d));
                    book.tokens(&mut rng, w.shared_prefix.document_tokens)
                })
                .collect();
        }
        book
    }

    fn tokens(&self, rng: &mut Rng, n: u32) -> Vec<u32> {
        (0..n)
            .map(|_| rng.range(u64::from(self.lo), u64::from(self.hi)) as u32)
            .collect()
    }

    fn segments(&self, index: u64, spec: PromptSpec) -> Segments {
        match spec {
            PromptSpec::Shared {
                doc,
                question_tokens,
            } => {
                let mut rng = Rng::new(self.seed, streams::PROMPT, index);
                let mut ids = self
                    .documents
                    .get(doc as usize)
                    .cloned()
                    .unwrap_or_default();
                ids.extend(self.tokens(&mut rng, question_tokens));
                vec![("user", ids)]
            }
            PromptSpec::Fresh { tokens } => {
                let mut rng = Rng::new(self.seed, streams::PROMPT, index);
                vec![("user", self.tokens(&mut rng, tokens))]
            }
            PromptSpec::Wave { wave, member } => {
                let mut rng = Rng::new(self.seed, streams::WAVE_DOCUMENT, u64::from(wave));
                let mut ids = self.tokens(&mut rng, self.fanout.document_tokens);
                let key = (u64::from(wave) << 32) | u64::from(member);
                let mut rng = Rng::new(self.seed, streams::WAVE_QUESTION, key);
                let n = sample(&self.fanout.question_tokens, &mut rng);
                ids.extend(self.tokens(&mut rng, n));
                vec![("user", ids)]
            }
            // Closed loops build their prompts turn by turn (`session.rs`).
            PromptSpec::Closed { .. } | PromptSpec::WaveSeries => Vec::new(),
            PromptSpec::Turn { conv, turn } => {
                let c = &self.conversation;
                let mut rng = Rng::new(self.seed, streams::CONV_SYSTEM, conv);
                let mut out = vec![("system", self.tokens(&mut rng, c.system_tokens))];
                for t in 0..=turn {
                    let mut rng =
                        Rng::new(self.seed, streams::CONV_TURN, (conv << 24) ^ u64::from(t));
                    let user = sample(&c.user_tokens, &mut rng);
                    let reply = sample(&c.reply_tokens, &mut rng);
                    out.push(("user", self.tokens(&mut rng, user)));
                    if t < turn {
                        out.push(("assistant", self.tokens(&mut rng, reply)));
                    }
                }
                out
            }
        }
    }

    /// A closed conversation's system prompt (the same text an open one of
    /// the same number would send).
    pub(crate) fn system_text(&self, conv: u64) -> String {
        let mut rng = Rng::new(self.seed, streams::CONV_SYSTEM, conv);
        self.render(&self.tokens(&mut rng, self.conversation.system_tokens))
    }

    /// The user message of turn `turn` of conversation `conv`.
    pub(crate) fn user_text(&self, conv: u64, turn: u32) -> String {
        let c = &self.conversation;
        let mut rng = Rng::new(
            self.seed,
            streams::CONV_TURN,
            (conv << 24) ^ u64::from(turn),
        );
        let user = sample(&c.user_tokens, &mut rng);
        let _reply = sample(&c.reply_tokens, &mut rng); // keeps the stream as in open mode
        self.render(&self.tokens(&mut rng, user))
    }

    /// `max_tokens` for request `index` of a closed loop (`key` names the
    /// loop), drawn from `[output]` like planned requests.
    pub(crate) fn max_tokens(&self, key: u64, index: u32) -> u32 {
        let mut rng = Rng::new(
            self.seed,
            streams::SESSION_OUTPUT,
            (key << 24) ^ u64::from(index),
        );
        sample(&self.output.max_tokens, &mut rng)
    }

    fn render(&self, ids: &[u32]) -> String {
        let mut s = String::with_capacity(ids.len() * 6);
        for (i, &id) in ids.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(&self.words[id as usize % WORDS]);
        }
        s
    }

    /// The prompt of request number `index` with the given spec; `chat` asks
    /// for messages (`/v1/chat/completions`) instead of one prompt.
    pub(crate) fn build(&self, index: u64, spec: PromptSpec, chat: bool) -> Prompt {
        let segs = self.segments(index, spec);
        if chat {
            return Prompt::Chat(
                segs.into_iter()
                    .map(|(role, ids)| Message {
                        role,
                        content: self.render(&ids),
                    })
                    .collect(),
            );
        }
        match self.format {
            PromptFormat::Tokens => {
                Prompt::Tokens(segs.into_iter().flat_map(|(_, ids)| ids).collect())
            }
            PromptFormat::Text => Prompt::Text(
                segs.iter()
                    .map(|(_, ids)| self.render(ids))
                    .collect::<Vec<_>>()
                    .join("\n\n"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Dist;

    fn w(format: PromptFormat) -> Workload {
        let mut w = Workload {
            prompt_format: format,
            ..Workload::default()
        };
        w.mix.shared_prefix = 1.0;
        w.shared_prefix.documents = 2;
        w.shared_prefix.document_tokens = 50;
        w.conversation.user_tokens = Dist::fixed(5);
        w.conversation.reply_tokens = Dist::fixed(7);
        w.conversation.system_tokens = 3;
        w
    }

    #[test]
    fn shared_prefix_prompts_share_the_document() {
        let book = PromptBook::new(&w(PromptFormat::Tokens));
        let spec = PromptSpec::Shared {
            doc: 1,
            question_tokens: 10,
        };
        let (Prompt::Tokens(a), Prompt::Tokens(b)) =
            (book.build(1, spec, false), book.build(2, spec, false))
        else {
            panic!("tokens expected")
        };
        assert_eq!(a.len(), 60);
        assert_eq!(a[..50], b[..50]);
        assert_ne!(a[50..], b[50..]);
        assert!(a.iter().all(|&t| (100..32_000).contains(&t)));
        // Reproducible from the seed alone.
        let again = PromptBook::new(&w(PromptFormat::Tokens));
        assert_eq!(again.build(1, spec, false), Prompt::Tokens(a));
    }

    #[test]
    fn conversation_prefix_grows() {
        let book = PromptBook::new(&w(PromptFormat::Tokens));
        let t = |turn| match book.build(0, PromptSpec::Turn { conv: 4, turn }, false) {
            Prompt::Tokens(ids) => ids,
            other => panic!("{other:?}"),
        };
        let (t0, t1, t2) = (t(0), t(1), t(2));
        assert_eq!(t0.len(), 3 + 5);
        assert_eq!(t1.len(), 3 + 5 + 7 + 5);
        assert_eq!(t1[..t0.len()], t0[..]);
        assert_eq!(t2[..t1.len()], t1[..]);
        let Prompt::Chat(msgs) = book.build(0, PromptSpec::Turn { conv: 4, turn: 1 }, true) else {
            panic!()
        };
        let roles: Vec<_> = msgs.iter().map(|m| m.role).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
    }

    #[test]
    fn waves_share_their_own_document_only() {
        let mut w = w(PromptFormat::Tokens);
        w.fanout = Some(crate::workload::Fanout {
            document_tokens: 40,
            question_tokens: Dist::fixed(6),
            ..Default::default()
        });
        let book = PromptBook::new(&w);
        let ids = |wave, member| match book.build(0, PromptSpec::Wave { wave, member }, false) {
            Prompt::Tokens(ids) => ids,
            other => panic!("{other:?}"),
        };
        let (a, b, c) = (ids(0, 0), ids(0, 1), ids(1, 0));
        assert_eq!(a.len(), 46);
        assert_eq!(a[..40], b[..40], "one document per wave");
        assert_ne!(a[40..], b[40..], "a question per member");
        assert_ne!(a[..40], c[..40], "a new document per wave");
    }

    #[test]
    fn text_prompts_are_words() {
        let book = PromptBook::new(&w(PromptFormat::Text));
        let Prompt::Text(s) = book.build(3, PromptSpec::Fresh { tokens: 20 }, false) else {
            panic!()
        };
        assert_eq!(s.split(' ').count(), 20);
        assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == ' '));
    }
}
