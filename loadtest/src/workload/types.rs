//! The workload file's types. Every field has a default; unknown keys are
//! errors. `loadtest/README.md` has the same reference as a table.

use serde::{Deserialize, Serialize};

pub use super::fanout::{Fanout, WavePacing};

/// One workload: who sends, when, and what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Name shown in reports.
    pub name: String,
    /// Seed for every random choice: same file + same seed = same requests at
    /// the same offsets.
    pub seed: u64,
    /// Length of the sending schedule in seconds (`--duration` overrides).
    pub duration_s: f64,
    /// `text` (words generated from the seed) or `tokens` (arrays of ids).
    pub prompt_format: PromptFormat,
    /// Token ids in `tokens` format are drawn from `[first_token_id, vocab_size)`.
    pub vocab_size: u32,
    /// Lowest token id drawn in `tokens` format (skips special tokens).
    pub first_token_id: u32,
    /// Most requests in flight at once; past it the sender waits (and reports
    /// the lateness) rather than exhausting sockets.
    pub max_in_flight: usize,
    /// A request not finished this many seconds after its intended send time
    /// counts as an error `timeout`.
    pub request_timeout_s: f64,
    /// Sent as `temperature` when set.
    pub temperature: Option<f64>,
    /// Sends `ignore_eos: true` (a vLLM extension Cake honours) so outputs
    /// run to `max_tokens`; off by default to keep requests standard.
    pub ignore_eos: bool,
    /// When requests are sent.
    pub arrival: Arrival,
    /// Who sends them. Empty means one tenant `default` with no API key.
    pub tenants: Vec<Tenant>,
    /// Relative weights of the three prompt kinds.
    pub mix: Mix,
    /// Prompts that share a document prefix.
    pub shared_prefix: SharedPrefix,
    /// Prompts with nothing in common.
    pub fresh: Fresh,
    /// Multi-turn conversations whose prefix grows each turn.
    pub conversation: Conversation,
    /// Fan-out waves: N requests over one new document, sent together.
    /// Absent (the default) sends none.
    pub fanout: Option<Fanout>,
    /// Output lengths.
    pub output: Output,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            name: "workload".into(),
            seed: 0,
            duration_s: 30.0,
            prompt_format: PromptFormat::Text,
            vocab_size: 32_000,
            first_token_id: 100,
            max_in_flight: 10_000,
            request_timeout_s: 120.0,
            temperature: None,
            ignore_eos: false,
            arrival: Arrival::default(),
            tenants: Vec::new(),
            mix: Mix::default(),
            shared_prefix: SharedPrefix::default(),
            fresh: Fresh::default(),
            conversation: Conversation::default(),
            fanout: None,
            output: Output::default(),
        }
    }
}

/// How prompts travel.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// A string of generated words (one word per prompt "token").
    Text,
    /// An array of token ids (`/v1/completions` only).
    Tokens,
}

/// The arrival process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Arrival {
    /// `poisson`, `constant`, `bursts` or `ramp`.
    pub process: ArrivalProcess,
    /// Requests per second (`poisson`, `constant`; the background rate
    /// between bursts for `bursts`). `--rate` overrides.
    pub rate: f64,
    /// `bursts`: requests sent at the same instant in each burst.
    pub burst_size: u32,
    /// `bursts`: seconds between bursts (the first at 0).
    pub burst_every_s: f64,
    /// `ramp`: rate of the first step.
    pub start_rate: f64,
    /// `ramp`: rate of the last step (`--rate` overrides).
    pub end_rate: f64,
    /// `ramp`: number of equal-length steps, Poisson within each.
    pub steps: u32,
}

impl Default for Arrival {
    fn default() -> Self {
        Arrival {
            process: ArrivalProcess::Poisson,
            rate: 10.0,
            burst_size: 10,
            burst_every_s: 5.0,
            start_rate: 1.0,
            end_rate: 50.0,
            steps: 10,
        }
    }
}

/// The kinds of arrival process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ArrivalProcess {
    /// Exponential gaps at `rate`.
    Poisson,
    /// Evenly spaced at `rate`.
    Constant,
    /// `burst_size` at once every `burst_every_s`, Poisson `rate` between.
    Bursts,
    /// Poisson at a rate stepping from `start_rate` to `end_rate`: finds
    /// the rate where goodput stops following the offered load.
    Ramp,
}

/// One tenant: an API key and its share of the traffic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Tenant {
    /// Name in reports.
    pub name: String,
    /// Sent as `Authorization: Bearer KEY`; empty sends no header.
    pub api_key: String,
    /// Relative share of requests.
    pub share: f64,
    /// A successful request counts toward goodput when its TTFT is at most
    /// this; unset means every success counts.
    pub ttft_slo_ms: Option<f64>,
}

impl Default for Tenant {
    fn default() -> Self {
        Tenant {
            name: "default".into(),
            api_key: String::new(),
            share: 1.0,
            ttft_slo_ms: None,
        }
    }
}

/// Relative weights of the prompt kinds (need not sum to 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Mix {
    /// Weight of shared-prefix prompts.
    pub shared_prefix: f64,
    /// Weight of fresh prompts.
    pub fresh: f64,
    /// Weight of conversation turns.
    pub conversation: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            shared_prefix: 0.0,
            fresh: 1.0,
            conversation: 0.0,
        }
    }
}

/// Prompts made of one of `documents` documents plus a fresh question.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SharedPrefix {
    /// How many distinct documents.
    pub documents: u32,
    /// Length of each document in tokens (words in `text` format).
    pub document_tokens: u32,
    /// Length of the question appended to the document.
    pub question_tokens: Dist,
    /// Which documents are reused most: `uniform` or `zipf`.
    pub skew: Skew,
    /// Zipf exponent: document of rank k is drawn ∝ 1/k^s.
    pub zipf_s: f64,
}

impl Default for SharedPrefix {
    fn default() -> Self {
        SharedPrefix {
            documents: 8,
            document_tokens: 1024,
            question_tokens: Dist::uniform(16, 64),
            skew: Skew::Zipf,
            zipf_s: 1.1,
        }
    }
}

/// How document reuse is spread.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Skew {
    /// Every document equally likely.
    Uniform,
    /// A few hot documents, a long tail.
    Zipf,
}

/// Prompts with nothing in common.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Fresh {
    /// Prompt length.
    pub prompt_tokens: Dist,
}

impl Default for Fresh {
    fn default() -> Self {
        Fresh {
            prompt_tokens: Dist::uniform(64, 512),
        }
    }
}

/// Multi-turn conversations: turn t sends the system prompt, every earlier
/// user message and reply, and a new user message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Conversation {
    /// `open`: every turn is its own arrival and replies are synthetic;
    /// `closed`: an arrival starts a conversation whose turns follow each
    /// other back to back, each carrying the replies the server sent.
    pub mode: ConversationMode,
    /// `closed`: seconds between a turn's last byte and the next turn's
    /// send (a user reading and typing); 0 sends at once.
    pub think_time_s: f64,
    /// `open`: conversations open at once; a finished one is replaced by a
    /// new one. (`closed` starts one per arrival instead.)
    pub conversations: u32,
    /// Turns per conversation.
    pub turns: u32,
    /// Length of each conversation's system prompt.
    pub system_tokens: u32,
    /// Length of each user message.
    pub user_tokens: Dist,
    /// `open`: length of the (synthetic) assistant reply placed in the
    /// history, since the sender does not wait for real replies. `closed`
    /// ignores it: the history holds what the server returned.
    pub reply_tokens: Dist,
}

/// How the turns of a conversation are paced.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConversationMode {
    /// Every turn on the open-loop schedule, synthetic replies.
    #[default]
    Open,
    /// Turns back to back, real replies appended to the history.
    Closed,
}

impl Default for Conversation {
    fn default() -> Self {
        Conversation {
            mode: ConversationMode::Open,
            think_time_s: 0.0,
            conversations: 8,
            turns: 4,
            system_tokens: 128,
            user_tokens: Dist::uniform(16, 64),
            reply_tokens: Dist::uniform(32, 128),
        }
    }
}

/// Output lengths.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Output {
    /// Sent as `max_tokens`.
    pub max_tokens: Dist,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            max_tokens: Dist::fixed(64),
        }
    }
}

/// A length distribution; which fields count depends on `dist`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Dist {
    /// `fixed` (value), `uniform` (min..=max), `normal` or `lognormal`
    /// (mean, sd, clamped to min..=max).
    pub dist: DistKind,
    /// `fixed`: the length.
    pub value: u32,
    /// Lower bound (inclusive).
    pub min: u32,
    /// Upper bound (inclusive).
    pub max: u32,
    /// `normal`/`lognormal`: mean length.
    pub mean: f64,
    /// `normal`/`lognormal`: standard deviation of the length.
    pub sd: f64,
}

impl Default for Dist {
    fn default() -> Self {
        Dist::fixed(64)
    }
}

impl Dist {
    /// Always `value`.
    pub fn fixed(value: u32) -> Self {
        Dist {
            dist: DistKind::Fixed,
            value,
            min: 1,
            max: 1_000_000,
            mean: 0.0,
            sd: 0.0,
        }
    }

    /// Uniform over `min..=max`.
    pub fn uniform(min: u32, max: u32) -> Self {
        Dist {
            dist: DistKind::Uniform,
            min,
            max,
            ..Dist::fixed(0)
        }
    }
}

/// The kinds of length distribution.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DistKind {
    /// Always `value`.
    Fixed,
    /// Uniform over `min..=max`.
    Uniform,
    /// Normal(mean, sd), rounded and clamped.
    Normal,
    /// Log-normal with the given mean and sd of the length, clamped.
    Lognormal,
}
