//! Per-tenant limits (DESIGN.md section 5): requests per second and prompt
//! tokens per minute (token buckets), requests in flight, and prompt length.
//!
//! A bucket holds one period's allowance (one second of requests, one
//! minute of prompt tokens) and refills continuously. A check consumes only
//! when every limit passes, so a refused request costs the tenant nothing.
//! A request larger than a whole bucket is let through when the bucket is
//! full and leaves it in debt, which later requests wait out: the long-run
//! rate holds and such a request is not refused forever.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::load::secs;

/// A tenant's limits; each is off when `None`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    /// Requests admitted per second (fractions allowed, e.g. `0.5`).
    pub requests_per_s: Option<f64>,
    /// Prompt tokens admitted per minute.
    pub prompt_tokens_per_min: Option<u64>,
    /// Requests in flight at once (queued or running).
    pub max_concurrent: Option<u32>,
    /// Prompt tokens in one request.
    pub max_prompt_tokens: Option<u64>,
}

/// Which limit refused a request; `Display` gives the name API users see
/// (and the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// [`TenantLimits::requests_per_s`].
    RequestsPerSecond,
    /// [`TenantLimits::prompt_tokens_per_min`].
    PromptTokensPerMinute,
    /// [`TenantLimits::max_concurrent`].
    MaxConcurrent,
    /// [`TenantLimits::max_prompt_tokens`].
    MaxPromptTokens,
}

impl LimitKind {
    /// The limit's name: `"requests_per_second"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::RequestsPerSecond => "requests_per_second",
            LimitKind::PromptTokensPerMinute => "prompt_tokens_per_minute",
            LimitKind::MaxConcurrent => "max_concurrent",
            LimitKind::MaxPromptTokens => "max_prompt_tokens",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request refused by a rate or concurrency limit; retrying after
/// `retry_after` may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tenant limit {limit} reached; retry after {retry_after:?}")]
pub struct Limited {
    /// The limit reached.
    pub limit: LimitKind,
    /// Time until the limit would let the same request through.
    pub retry_after: Duration,
}

/// Why a tenant's request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Over a rate or concurrency limit (HTTP 429 with `Retry-After`).
    #[error(transparent)]
    Limited(#[from] Limited),
    /// The prompt is longer than the tenant may send: retrying cannot help
    /// (HTTP 413).
    #[error("prompt has {got} tokens; tenant limit max_prompt_tokens is {max}")]
    PromptTooLong {
        /// The limit.
        max: u64,
        /// The prompt's length.
        got: u64,
    },
}

impl Refusal {
    /// The limit that refused.
    pub fn limit(&self) -> LimitKind {
        match self {
            Refusal::Limited(l) => l.limit,
            Refusal::PromptTooLong { .. } => LimitKind::MaxPromptTokens,
        }
    }

    /// When a retry may succeed; `None` when it cannot.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::Limited(l) => Some(l.retry_after),
            Refusal::PromptTooLong { .. } => None,
        }
    }
}

/// Whole seconds for an HTTP `Retry-After` header: `d` rounded up, at
/// least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// A token bucket: `capacity` tokens, refilled at `rate` per second,
/// full at first use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A bucket of `capacity` tokens refilled at `rate` tokens per second.
    /// Non-positive or non-finite values are taken as the smallest positive
    /// ones, so the bucket never divides by zero.
    pub fn new(capacity: f64, rate: f64) -> Self {
        let pos = |x: f64| {
            if x.is_finite() && x > 0.0 {
                x
            } else {
                f64::MIN_POSITIVE
            }
        };
        let capacity = pos(capacity);
        Self {
            capacity,
            rate: pos(rate),
            tokens: capacity,
            last: None,
        }
    }

    /// `n` per second, bursting up to `n` (at least 1).
    pub fn per_second(n: f64) -> Self {
        Self::new(n.max(1.0), n)
    }

    /// `n` per minute, bursting up to `n`.
    pub fn per_minute(n: u64) -> Self {
        Self::new(n as f64, n as f64 / 60.0)
    }

    /// Takes `cost` tokens if there are enough at `now`; otherwise takes
    /// nothing and returns the time until there will be.
    pub fn check(&mut self, now: Instant, cost: u64) -> Result<(), Duration> {
        self.refill(now);
        match self.shortfall(cost) {
            Some(wait) => Err(wait),
            None => {
                self.take(cost);
                Ok(())
            }
        }
    }

    /// Tokens available at the last refill.
    pub fn available(&self) -> f64 {
        self.tokens
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        }
        // Time never runs backwards for the bucket.
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
    }

    /// `None` if `cost` can be taken now, else the wait until it can.
    fn shortfall(&self, cost: u64) -> Option<Duration> {
        let need = (cost as f64).min(self.capacity);
        if self.tokens >= need {
            None
        } else {
            Some(secs((need - self.tokens) / self.rate).max(Duration::from_nanos(1)))
        }
    }

    fn take(&mut self, cost: u64) {
        self.tokens -= cost as f64;
    }
}

/// Retry-After for `max_concurrent`: a slot frees when some request ends,
/// which the limiter cannot predict, so it suggests one second.
pub const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

/// One tenant's limit state.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLimiter {
    limits: TenantLimits,
    requests: Option<TokenBucket>,
    prompt_tokens: Option<TokenBucket>,
    in_flight: u32,
}

impl TenantLimiter {
    /// A limiter enforcing `limits`, all buckets full.
    pub fn new(limits: TenantLimits) -> Self {
        Self {
            limits,
            requests: limits.requests_per_s.map(TokenBucket::per_second),
            prompt_tokens: limits.prompt_tokens_per_min.map(TokenBucket::per_minute),
            in_flight: 0,
        }
    }

    /// The limits enforced.
    pub fn limits(&self) -> &TenantLimits {
        &self.limits
    }

    /// Admits a request of `prompt_tokens` at `now` if every limit allows
    /// it: then it takes one request and `prompt_tokens` from the buckets
    /// and one in-flight slot, to be given back by [`TenantLimiter::release`].
    /// Refused, it takes nothing. With several limits reached, the one
    /// reported is the one that needs the longest wait.
    pub fn check(&mut self, now: Instant, prompt_tokens: u64) -> Result<(), Refusal> {
        if let Some(max) = self.limits.max_prompt_tokens
            && prompt_tokens > max
        {
            return Err(Refusal::PromptTooLong {
                max,
                got: prompt_tokens,
            });
        }
        let mut worst: Option<Limited> = None;
        let mut note = |limit, retry_after| {
            if worst.is_none_or(|w| retry_after > w.retry_after) {
                worst = Some(Limited { limit, retry_after });
            }
        };
        if let Some(b) = self.requests.as_mut() {
            b.refill(now);
            if let Some(wait) = b.shortfall(1) {
                note(LimitKind::RequestsPerSecond, wait);
            }
        }
        if let Some(b) = self.prompt_tokens.as_mut() {
            b.refill(now);
            if let Some(wait) = b.shortfall(prompt_tokens) {
                note(LimitKind::PromptTokensPerMinute, wait);
            }
        }
        if let Some(max) = self.limits.max_concurrent
            && self.in_flight >= max
        {
            note(LimitKind::MaxConcurrent, CONCURRENCY_RETRY);
        }
        if let Some(l) = worst {
            return Err(l.into());
        }
        if let Some(b) = self.requests.as_mut() {
            b.take(1);
        }
        if let Some(b) = self.prompt_tokens.as_mut() {
            b.take(prompt_tokens);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// A request admitted by [`TenantLimiter::check`] finished (served,
    /// failed, shed or expired).
    pub fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Requests admitted and not yet released.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bucket_refuses_with_the_real_wait_and_consumes_only_on_success() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_second(2.0);
        assert_eq!(b.check(t0, 1), Ok(()));
        assert_eq!(b.check(t0, 1), Ok(()));
        assert_eq!(b.check(t0, 1), Err(ms(500)));
        // The refusal took nothing: 250 ms later half a token is back.
        assert_eq!(b.check(t0 + ms(250), 1), Err(ms(250)));
        assert_eq!(b.check(t0 + ms(500), 1), Ok(()));
        assert_eq!(b.check(t0 + ms(500), 1), Err(ms(500)));
        // Never more than the capacity.
        assert_eq!(b.check(t0 + Duration::from_secs(100), 2), Ok(()));
        assert!(b.check(t0 + Duration::from_secs(100), 1).is_err());
    }

    #[test]
    fn oversized_cost_passes_when_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(600); // 10 per second
        assert_eq!(b.check(t0, 1200), Ok(()));
        assert_eq!(b.available(), -600.0);
        // 600 of debt plus 10 more at 10/s.
        assert_eq!(b.check(t0, 10), Err(Duration::from_secs(61)));
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::per_second(1.0);
        assert_eq!(b.check(t0, 1), Ok(()));
        assert!(b.check(t0 - Duration::from_secs(5), 1).is_err());
        assert_eq!(b.check(t0 + Duration::from_secs(1), 1), Ok(()));
    }

    #[test]
    fn limiter_checks_all_limits_together() {
        let t0 = Instant::now();
        let mut l = TenantLimiter::new(TenantLimits {
            requests_per_s: Some(10.0),
            prompt_tokens_per_min: Some(6000),
            max_concurrent: Some(2),
            max_prompt_tokens: Some(4000),
        });
        assert_eq!(
            l.check(t0, 5000),
            Err(Refusal::PromptTooLong {
                max: 4000,
                got: 5000
            })
        );
        assert_eq!(l.check(t0, 4000), Ok(()));
        // 2000 tokens left; 3000 needs 1000 more at 100/s.
        let err = l.check(t0, 3000).unwrap_err();
        assert_eq!(err.limit(), LimitKind::PromptTokensPerMinute);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
        assert_eq!(l.check(t0, 1000), Ok(()));
        let err = l.check(t0, 1).unwrap_err();
        assert_eq!(err.limit(), LimitKind::MaxConcurrent);
        assert_eq!(l.in_flight(), 2);
        l.release();
        assert_eq!(l.check(t0, 1), Ok(()));
    }

    #[test]
    fn requests_per_second_refusal_takes_no_prompt_tokens() {
        let t0 = Instant::now();
        let mut l = TenantLimiter::new(TenantLimits {
            requests_per_s: Some(1.0),
            prompt_tokens_per_min: Some(60),
            ..TenantLimits::default()
        });
        assert_eq!(l.check(t0, 30), Ok(()));
        let err = l.check(t0 + ms(100), 30).unwrap_err();
        assert_eq!(err.limit(), LimitKind::RequestsPerSecond);
        let wait = err.retry_after().unwrap_or_default();
        assert!(
            wait.abs_diff(ms(900)) < Duration::from_micros(1),
            "{wait:?}"
        );
        // The 30 tokens were not taken: at 1 s both pass.
        assert_eq!(l.check(t0 + Duration::from_secs(1), 30), Ok(()));
    }

    #[test]
    fn no_limits_admit_everything() {
        let t0 = Instant::now();
        let mut l = TenantLimiter::new(TenantLimits::default());
        for _ in 0..10_000 {
            assert_eq!(l.check(t0, 1_000_000), Ok(()));
        }
    }

    #[test]
    fn limit_names_and_retry_after_header() {
        let names: Vec<_> = [
            LimitKind::RequestsPerSecond,
            LimitKind::PromptTokensPerMinute,
            LimitKind::MaxConcurrent,
            LimitKind::MaxPromptTokens,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            names,
            [
                "requests_per_second",
                "prompt_tokens_per_minute",
                "max_concurrent",
                "max_prompt_tokens"
            ]
        );
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(ms(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(ms(2001)), 3);
    }
}
