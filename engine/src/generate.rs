//! One sequence's generation: prefill, then decode steps with sampling,
//! stop sequences, EOS and log-probabilities. [`Decoding`] is the
//! per-sequence state machine the step scheduler drives; [`Model::generate`]
//! drives it alone.

use crate::sampling::{log_softmax, top_indices};
use crate::{EngineError, KvCache, Model, Sampler, SamplingParams, Tokenizer};

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

/// The result of a whole generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub logprobs: Vec<TokenLogprob>,
    /// One per prompt token (the first has none), when asked for.
    pub prompt_logprobs: Vec<Option<TokenLogprob>>,
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
    text: String,
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
    pub fn step(
        &mut self,
        tokenizer: &Tokenizer,
        logits: &[f32],
    ) -> Result<StepOutput, EngineError> {
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
            let mut out = self.release(tokenizer, true)?;
            out.token = token;
            out.logprob = logprob;
            out.finish = self.finish;
            return Ok(out);
        }
        let mut out = self.release(tokenizer, false)?;
        out.token = token;
        out.logprob = logprob;
        if self.finish.is_none() && self.tokens.len() >= self.opts.max_tokens {
            self.finish = Some(FinishReason::Length);
            let tail = self.flush();
            out.text_delta.push_str(&tail);
        }
        out.finish = self.finish;
        Ok(out)
    }

    /// Decodes the output so far and releases what is final.
    fn release(&mut self, tokenizer: &Tokenizer, at_eos: bool) -> Result<StepOutput, EngineError> {
        let n = if at_eos {
            self.tokens.len() - 1
        } else {
            self.tokens.len()
        };
        let text = tokenizer.decode(&self.tokens[..n])?;
        let mut out = StepOutput {
            token: 0,
            text_delta: String::new(),
            logprob: None,
            finish: None,
        };
        let from = self.emitted.min(text.len());
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
        self.text = text;
        let mut safe = if at_eos {
            self.text.len()
        } else {
            self.text.len() - held_back(&self.text, &self.opts.stop)
        };
        if !at_eos && self.text[..safe].ends_with('\u{FFFD}') {
            // Likely an incomplete multi-byte character: wait for more.
            safe -= '\u{FFFD}'.len_utf8();
        }
        let safe = floor_char(&self.text, safe).max(from);
        out.text_delta = self.text[from..safe].to_string();
        self.emitted = safe;
        Ok(out)
    }

    /// Releases everything held back (the sequence ended by length).
    fn flush(&mut self) -> String {
        let tail = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        tail
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

    /// Prefills `prompt` in aligned chunks, reporting each prompt token's
    /// log-probability (chunk by chunk, so memory stays bounded). Returns
    /// the last token's logits.
    pub fn prefill_with_logprobs(
        &self,
        cache: &mut KvCache,
        prompt: &[u32],
        chunk_tokens: usize,
        top: usize,
        out: &mut Vec<Option<TokenLogprob>>,
    ) -> Result<Vec<f32>, EngineError> {
        self.check_fits(prompt.len(), 0)?;
        let chunk_tokens = chunk_tokens.max(1);
        if cache.is_empty() {
            out.push(None);
        }
        let mut done = 0;
        let mut last = Vec::new();
        while done < prompt.len() {
            let room = chunk_tokens - cache.len() % chunk_tokens;
            let end = (done + room).min(prompt.len());
            let logits = self.forward(cache, &prompt[done..end])?.into_vec()?;
            let v = self.config().vocab_size;
            for (r, row) in logits.chunks(v).enumerate() {
                let i = done + r + 1;
                if i < prompt.len() {
                    out.push(Some(logprob_of(row, prompt[i], top)));
                } else {
                    last = row.to_vec();
                }
            }
            done = end;
        }
        Ok(last)
    }

    /// Generates after `prompt` on a fresh cache, calling `on_step` with
    /// every decode step (for streaming).
    pub fn generate(
        &self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_step: impl FnMut(&StepOutput),
    ) -> Result<Generation, EngineError> {
        opts.sampling.validate()?;
        self.check_fits(prompt.len(), opts.max_tokens)?;
        let mut cache = self.new_cache();
        let mut prompt_logprobs = Vec::new();
        let mut logits = if opts.prompt_logprobs {
            self.prefill_with_logprobs(
                &mut cache,
                prompt,
                opts.chunk_tokens,
                opts.logprobs.unwrap_or(0),
                &mut prompt_logprobs,
            )?
        } else {
            self.prefill(&mut cache, prompt, opts.chunk_tokens)?
                .last_logits
        };
        let mut dec = Decoding::new(self, tokenizer, opts.clone());
        let mut logprobs = Vec::new();
        if opts.max_tokens > 0 {
            loop {
                let step = dec.step(tokenizer, &logits)?;
                on_step(&step);
                if let Some(lp) = &step.logprob {
                    logprobs.push(lp.clone());
                }
                if step.finish.is_some() {
                    break;
                }
                logits = self.forward_last(&mut cache, &[step.token])?;
            }
        }
        Ok(Generation {
            prompt_tokens: prompt.len(),
            tokens: dec.tokens().to_vec(),
            text: dec.text().to_string(),
            finish: dec.finished().unwrap_or(FinishReason::Length),
            logprobs,
            prompt_logprobs,
        })
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
