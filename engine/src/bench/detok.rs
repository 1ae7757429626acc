//! Detokenization over a long output, the two ways a server can do it:
//! decoding the whole output again at every step (what serving did
//! before), or pushing each token into a [`crate::tokenizer::DecodeStream`]
//! (what it does now). Both run in one process on the same ids, so the
//! ratio holds on a noisy machine.

use std::time::Instant;

use crate::{EngineError, Tokenizer};

/// What [`run`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DetokReport {
    /// Output tokens detokenized, one step each.
    pub tokens: usize,
    /// Whole-output decode at every step: total ms, and µs a token over
    /// the last tenth of the output.
    pub whole_ms: f64,
    pub whole_last_us: f64,
    /// One token at a time through the stream.
    pub stream_ms: f64,
    pub stream_last_us: f64,
    /// `whole_ms / stream_ms`.
    pub speedup: f64,
    /// Both ways gave the same text.
    pub same_text: bool,
}

/// `tokens` ids of real text (the tokenizer's encoding of a repeated
/// paragraph), detokenized both ways.
pub fn run(tokenizer: &Tokenizer, tokens: usize) -> Result<DetokReport, EngineError> {
    let paragraph = "The quick brown fox jumps over the lazy dog. Élan, naïveté and \
                     façade — 東京 and emoji 🎉 — keep the decoder honest. ";
    let mut ids = Vec::new();
    while ids.len() < tokens {
        ids.extend(tokenizer.encode(paragraph, false)?);
    }
    ids.truncate(tokens);
    let tail = tokens - tokens / 10;

    let t0 = Instant::now();
    let mut whole = String::new();
    let mut t_tail = t0;
    for n in 1..=ids.len() {
        if n == tail + 1 {
            t_tail = Instant::now();
        }
        whole = tokenizer.decode(&ids[..n])?;
    }
    let whole_ms = t0.elapsed().as_secs_f64() * 1e3;
    let whole_last_us = t_tail.elapsed().as_secs_f64() * 1e6 / (tokens - tail).max(1) as f64;

    let t0 = Instant::now();
    let mut stream = tokenizer.decode_stream();
    let mut streamed = String::new();
    let mut t_tail = t0;
    for (i, &id) in ids.iter().enumerate() {
        if i == tail {
            t_tail = Instant::now();
        }
        streamed.push_str(&stream.push(id)?);
    }
    streamed.push_str(&stream.finish()?);
    let stream_ms = t0.elapsed().as_secs_f64() * 1e3;
    let stream_last_us = t_tail.elapsed().as_secs_f64() * 1e6 / (tokens - tail).max(1) as f64;

    Ok(DetokReport {
        tokens,
        whole_ms,
        whole_last_us,
        stream_ms,
        stream_last_us,
        speedup: whole_ms / stream_ms.max(1e-9),
        same_text: whole == streamed,
    })
}
