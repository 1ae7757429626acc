//! One sequence's decoding: sampling, stop sequences, EOS and
//! log-probabilities. [`Decoding`] is the per-sequence state machine the
//! step scheduler drives (`worker/seq.rs`); prefill and prompt
//! log-probabilities are computed there too, in the steps that serve a
//! request.

use crate::sampling::{log_softmax, top_indices};
use crate::tokenizer::DecodeStream;
use crate::{EngineError, Model, Sampler, SamplingParams, Tokenizer};

/// What to generate after a prompt.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// EOS is not accepted before this many tokens.
    pub min_tokens: usize,
    /// Generation stops before the first occurrence of any of these.
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Alternatives to report per output token (`Some(0)`: only the
    /// chosen token's log-probability).
    pub logprobs: Option<usize>,
    /// Also report each prompt token's log-probability (vLLM's
    /// `echo` + `logprobs`).
    pub prompt_logprobs: bool,
    /// Prefill chunk size (a power of two; chunk boundaries fall on its
    /// multiples).
    pub chunk_tokens: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            sampling: SamplingParams::default(),
            max_tokens: 16,
            min_tokens: 0,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: false,
            chunk_tokens: 256,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// EOS or a stop sequence.
    Stop,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// A token's log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// One decode step's outcome.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The token sampled (also when it ended the sequence).
    pub token: u32,
    /// Text that became final with this token (may be empty while a
    /// multi-byte character or a possible stop sequence is held back).
    pub text_delta: String,
    pub logprob: Option<TokenLogprob>,
    /// Set when this token ended the sequence.
    pub finish: Option<FinishReason>,
}

pub(crate) fn logprob_of(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let ls = log_softmax(logits);
    TokenLogprob {
        token,
        logprob: ls.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY),
        top: top_indices(&ls, top)
            .into_iter()
            .map(|i| (i as u32, ls[i]))
            .collect(),
    }
}

/// Per-sequence decoding state: sampling, stop handling, text assembly.
#[derive(Debug)]
pub struct Decoding {
    sampler: Sampler,
    opts: GenerateOptions,
    eos: Vec<u32>,
    allowed: usize,
    tokens: Vec<u32>,
    /// The output's text so far, grown one token at a time by `stream`
    /// (never decoded whole again: that cost grows with the output).
    text: String,
    stream: DecodeStream,
    emitted: usize,
    finish: Option<FinishReason>,
}

impl Decoding {
    pub fn new(model: &Model, tokenizer: &Tokenizer, opts: GenerateOptions) -> Decoding {
        let mut eos = model.config().eos_token_ids.clone();
        eos.extend(tokenizer.eos_ids());
        eos.sort_unstable();
        eos.dedup();
        Decoding {
            sampler: Sampler::new(opts.sampling.clone()),
            allowed: tokenizer.vocab_size().min(model.config().vocab_size),
            eos,
            opts,
            tokens: Vec::new(),
            text: String::new(),
            stream: tokenizer.decode_stream(),
            emitted: 0,
            finish: None,
        }
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finish
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn text(&self) -> &str {
        &self.text[..self.emitted]
    }

    /// Samples the next token from `logits` and updates the state.
    pub fn step(&mut self, logits: &[f32]) -> Result<StepOutput, EngineError> {
        let banned: &[u32] = if self.tokens.len() < self.opts.min_tokens {
            &self.eos
        } else {
            &[]
        };
        let token = self
            .sampler
            .sample(logits, self.allowed, &self.tokens, banned);
        let logprob = self.opts.logprobs.map(|n| logprob_of(logits, token, n));
        self.tokens.push(token);
        if !self.opts.ignore_eos && self.eos.contains(&token) {
            self.finish = Some(FinishReason::Stop);
            let mut out = self.release(token, true)?;
            out.token = token;
            out.logprob = logprob;
            out.finish = self.finish;
            return Ok(out);
        }
        let mut out = self.release(token, false)?;
        out.token = token;
        out.logprob = logprob;
        if self.finish.is_none() && self.tokens.len() >= self.opts.max_tokens {
            self.finish = Some(FinishReason::Length);
            let tail = self.flush()?;
            out.text_delta.push_str(&tail);
        }
        out.finish = self.finish;
        Ok(out)
    }

    /// Takes in `token`'s text and releases what is final. An ending EOS
    /// adds no text of its own, only what the stream still held (an
    /// incomplete character).
    fn release(&mut self, token: u32, at_eos: bool) -> Result<StepOutput, EngineError> {
        let mut text = std::mem::take(&mut self.text);
        text.push_str(&if at_eos {
            self.stream.finish()?
        } else {
            self.stream.push(token)?
        });
        let mut out = StepOutput {
            token: 0,
            text_delta: String::new(),
            logprob: None,
            finish: None,
        };
        let from = self.emitted.min(text.len());
        // A stop sequence may end in text the stream still holds (bytes of
        // no valid character yet): look at it too, without giving it out.
        let given = text.len();
        if !at_eos && self.opts.stop.iter().any(|s| !s.is_empty()) {
            text.push_str(&self.stream.held()?);
        }
        let search_from = floor_char(&text, from.saturating_sub(max_len(&self.opts.stop)));
        if let Some(pos) = self
            .opts
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                text[search_from..]
                    .find(s.as_str())
                    .map(|p| p + search_from)
            })
            .min()
        {
            self.text = text[..pos].to_string();
            out.text_delta = self.text[from.min(pos)..].to_string();
            self.emitted = self.text.len();
            self.finish = Some(FinishReason::Stop);
            return Ok(out);
        }
        text.truncate(given);
        self.text = text;
        let safe = if at_eos {
            self.text.len()
        } else {
            self.text.len() - held_back(&self.text, &self.opts.stop)
        };
        let safe = floor_char(&self.text, safe).max(from);
        out.text_delta = self.text[from..safe].to_string();
        self.emitted = safe;
        Ok(out)
    }

    /// Releases everything held back (the sequence ended by length).
    fn flush(&mut self) -> Result<String, EngineError> {
        let held = self.stream.finish()?;
        self.text.push_str(&held);
        let tail = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        Ok(tail)
    }
}

fn max_len(stop: &[String]) -> usize {
    stop.iter().map(String::len).max().unwrap_or(0)
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Bytes at the end of `text` that could be the start of a stop sequence.
fn held_back(text: &str, stop: &[String]) -> usize {
    let mut hold = 0;
    for s in stop {
        for k in (1..s.len()).rev() {
            if k <= text.len() && s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                hold = hold.max(k);
                break;
            }
        }
    }
    hold
}

impl Model {
    /// Checks that a prompt and its output fit the context.
    pub fn check_fits(&self, prompt: usize, max_tokens: usize) -> Result<(), EngineError> {
        if prompt == 0 {
            return Err(EngineError::BadRequest("the prompt is empty".into()));
        }
        if prompt + max_tokens > self.max_context() {
            return Err(EngineError::PromptTooLong {
                tokens: prompt,
                extra: max_tokens,
                context: self.max_context(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_finds_stop_prefixes() {
        let stop = vec!["END".to_string(), "xy".to_string()];
        assert_eq!(held_back("abcE", &stop), 1);
        assert_eq!(held_back("abcEN", &stop), 2);
        assert_eq!(held_back("abcx", &stop), 1);
        assert_eq!(held_back("abc", &stop), 0);
    }
}
