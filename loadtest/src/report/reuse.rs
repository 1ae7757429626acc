//! Prefix reuse as the server reported it: how much of the prompts came
//! from its cache (`usage.prompt_tokens_details.cached_tokens`), how much it
//! prefilled (`usage.cake.computed_tokens`) and took from a request computing
//! the same prefix (`usage.cake.shared_tokens`); and per fan-out wave, how
//! many members found the wave's new prefix cached. Fields a server does not
//! send stay `None` (shown as `-`), never 0.

use std::collections::BTreeMap;

use serde::Serialize;

use super::summary::{Hist, Percentiles};
use crate::client::Outcome;
use crate::runner::Record;

/// Reuse figures of one group of requests (successes only).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReuseStats {
    /// Sum of `usage.prompt_tokens`.
    pub prompt_tokens: u64,
    /// Sum of `usage.prompt_tokens_details.cached_tokens`.
    pub cached_tokens: u64,
    /// `cached_tokens / prompt_tokens`; `None` when no request reported
    /// `cached_tokens`.
    pub cached_share: Option<f64>,
    /// Requests that reported `cached_tokens > 0`.
    pub cached_requests: u64,
    /// Requests that reported `cached_tokens` at all.
    pub reported_requests: u64,
    /// Mean of `usage.cake.computed_tokens` (prefill done per request) over
    /// the requests that reported it.
    pub computed_tokens_mean: Option<f64>,
    /// Sum of `usage.cake.shared_tokens`, when any request reported it.
    pub shared_tokens: Option<u64>,
}

#[derive(Default)]
pub(super) struct ReuseAcc {
    prompt: u64,
    cached: u64,
    cached_requests: u64,
    reported: u64,
    computed: u64,
    computed_n: u64,
    shared: Option<u64>,
}

impl ReuseAcc {
    /// Adds a successful request.
    pub(super) fn add(&mut self, r: &Record) {
        self.prompt += u64::from(r.prompt_tokens);
        if let Some(c) = r.reuse.cached_tokens {
            self.reported += 1;
            self.cached += u64::from(c);
            self.cached_requests += u64::from(c > 0);
        }
        if let Some(c) = r.reuse.computed_tokens {
            self.computed += u64::from(c);
            self.computed_n += 1;
        }
        if let Some(s) = r.reuse.shared_tokens {
            *self.shared.get_or_insert(0) += u64::from(s);
        }
    }

    pub(super) fn finish(&self) -> ReuseStats {
        ReuseStats {
            prompt_tokens: self.prompt,
            cached_tokens: self.cached,
            cached_share: (self.reported > 0)
                .then(|| self.cached as f64 / self.prompt.max(1) as f64),
            cached_requests: self.cached_requests,
            reported_requests: self.reported,
            computed_tokens_mean: (self.computed_n > 0)
                .then(|| self.computed as f64 / self.computed_n as f64),
            shared_tokens: self.shared,
        }
    }
}

/// One fan-out wave.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WaveRow {
    /// Wave number (0 first).
    pub wave: u32,
    /// Members finished.
    pub requests: u64,
    /// Members that streamed to the end.
    pub ok: u64,
    /// Members that reported `cached_tokens > 0`.
    pub cached_requests: u64,
    /// Members that reported `cached_tokens` at all.
    pub reported_requests: u64,
    /// First intended send → last member's end, in ms.
    pub time_ms: f64,
}

/// The fan-out waves of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WaveStats {
    /// Waves sent.
    pub waves: u64,
    /// Members finished, over all waves.
    pub requests: u64,
    /// Members that reported `cached_tokens > 0`, over all waves.
    pub cached_requests: u64,
    /// Members that reported `cached_tokens` at all, over all waves (0:
    /// the server does not report it, and `cached_requests` means nothing).
    pub reported_requests: u64,
    /// Wave times (first send → last response end).
    pub wave_time_ms: Percentiles,
    /// Each wave.
    pub per_wave: Vec<WaveRow>,
}

/// The waves of `records` (`None` when there were none).
pub(super) fn waves(records: &[Record]) -> Option<WaveStats> {
    let mut by_wave: BTreeMap<u32, Vec<&Record>> = BTreeMap::new();
    for r in records {
        if let Some(w) = r.wave {
            by_wave.entry(w).or_default().push(r);
        }
    }
    if by_wave.is_empty() {
        return None;
    }
    let mut hist = Hist::new();
    let per_wave: Vec<WaveRow> = by_wave
        .into_iter()
        .map(|(wave, rs)| {
            let first = rs.iter().map(|r| r.intended).min().unwrap_or_default();
            let last = rs
                .iter()
                .map(|r| r.intended + r.e2e)
                .max()
                .unwrap_or_default();
            let time = last.saturating_sub(first);
            hist.record(time);
            let ok: Vec<&&Record> = rs.iter().filter(|r| r.outcome == Outcome::Ok).collect();
            WaveRow {
                wave,
                requests: rs.len() as u64,
                ok: ok.len() as u64,
                cached_requests: ok
                    .iter()
                    .filter(|r| r.reuse.cached_tokens.is_some_and(|c| c > 0))
                    .count() as u64,
                reported_requests: ok
                    .iter()
                    .filter(|r| r.reuse.cached_tokens.is_some())
                    .count() as u64,
                time_ms: time.as_secs_f64() * 1000.0,
            }
        })
        .collect();
    Some(WaveStats {
        waves: per_wave.len() as u64,
        requests: per_wave.iter().map(|w| w.requests).sum(),
        cached_requests: per_wave.iter().map(|w| w.cached_requests).sum(),
        reported_requests: per_wave.iter().map(|w| w.reported_requests).sum(),
        wave_time_ms: hist.percentiles(),
        per_wave,
    })
}
