//! SLO shedding (DESIGN.md section 5): refuse a request at once, with a
//! `Retry-After`, when it cannot meet its tenant's TTFT SLO, rather than let
//! it wait in a queue it will time out of.
//!
//! The expected TTFT is the predicted wait in the gateway's queue plus the
//! predicted TTFT on the chosen worker (its backlog included). A request is
//! judged against `max(SLO, its own TTFT on an idle worker)`: one that could
//! not meet the SLO even alone (a very long prompt) is refused only for the
//! waiting it would add, never for its size — size is what
//! `max_prompt_tokens` limits. With a queue deadline, a request whose
//! predicted wait is past it is refused too: it would expire unserved.

use std::time::Duration;

use crate::load::{RateDefaults, WorkerLoad, secs};

/// What shedding knows about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShedInput {
    /// Predicted TTFT on the chosen worker, its backlog included
    /// ([`crate::Prediction::ttft`]).
    pub predicted_ttft: Duration,
    /// Predicted TTFT on that worker with no backlog
    /// ([`crate::Prediction::idle_ttft`]).
    pub idle_ttft: Duration,
    /// Predicted wait in the gateway's queue ([`queue_wait`]).
    pub queue_wait: Duration,
    /// The tenant's TTFT SLO; `None`: never shed.
    pub slo: Option<Duration>,
    /// Longest the request may wait in the queue; `None`: no bound here.
    pub queue_deadline: Option<Duration>,
}

/// The shedding decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Queue or dispatch it.
    Admit,
    /// Refuse it now (HTTP 429); the backlog should have drained enough
    /// after `retry_after`.
    Shed {
        /// How far the request misses: the time the backlog needs to drain
        /// for the same request to make it.
        retry_after: Duration,
    },
}

/// Decides whether to admit a request (see the module docs).
pub fn decide(input: &ShedInput) -> Decision {
    let Some(slo) = input.slo else {
        return Decision::Admit;
    };
    let expected = input.queue_wait.saturating_add(input.predicted_ttft);
    let target = slo.max(input.idle_ttft);
    let mut miss = expected.saturating_sub(target);
    if let Some(deadline) = input.queue_deadline {
        miss = miss.max(input.queue_wait.saturating_sub(deadline));
    }
    if miss.is_zero() {
        Decision::Admit
    } else {
        Decision::Shed { retry_after: miss }
    }
}

/// Predicted queue wait: `work_ahead` prompt tokens (e.g.
/// [`crate::FairQueue::work_ahead`] minus the request's own cost) at
/// `tokens_per_sec`. A rate that is not positive and finite is unknown and
/// gives no wait: shedding acts on evidence only.
pub fn queue_wait(work_ahead: u64, tokens_per_sec: f64) -> Duration {
    if tokens_per_sec.is_finite() && tokens_per_sec > 0.0 {
        secs(work_ahead as f64 / tokens_per_sec)
    } else {
        Duration::ZERO
    }
}

/// Prefill rate of a set of workers, prompt tokens per second, each at
/// chunk 0's cost (`chunk_tokens / a`); unknown rates from `defaults`.
pub fn prefill_rate<'a>(
    loads: impl IntoIterator<Item = &'a WorkerLoad>,
    defaults: &RateDefaults,
) -> f64 {
    loads
        .into_iter()
        .map(|l| {
            let w = l.resolved(defaults);
            w.chunk_tokens as f64 / w.compute_a
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn input(ttft: u64, wait: u64, slo: Option<u64>) -> ShedInput {
        ShedInput {
            predicted_ttft: ms(ttft),
            idle_ttft: ms(100),
            queue_wait: ms(wait),
            slo: slo.map(ms),
            queue_deadline: None,
        }
    }

    #[test]
    fn no_slo_always_admits() {
        assert_eq!(decide(&input(100_000, 100_000, None)), Decision::Admit);
    }

    #[test]
    fn admits_within_slo_and_sheds_beyond_with_the_miss() {
        assert_eq!(decide(&input(300, 200, Some(500))), Decision::Admit);
        assert_eq!(
            decide(&input(300, 450, Some(500))),
            Decision::Shed {
                retry_after: ms(250)
            }
        );
    }

    #[test]
    fn long_prompt_is_judged_on_its_waiting_only() {
        let mut i = input(2000, 0, Some(500));
        i.idle_ttft = ms(2000);
        assert_eq!(decide(&i), Decision::Admit);
        i.queue_wait = ms(300);
        assert_eq!(
            decide(&i),
            Decision::Shed {
                retry_after: ms(300)
            }
        );
    }

    #[test]
    fn queue_deadline_sheds_what_would_expire() {
        let mut i = input(100, 400, Some(10_000));
        i.queue_deadline = Some(ms(300));
        assert_eq!(
            decide(&i),
            Decision::Shed {
                retry_after: ms(100)
            }
        );
        i.queue_deadline = Some(ms(400));
        assert_eq!(decide(&i), Decision::Admit);
    }

    #[test]
    fn queue_wait_divides_safely() {
        assert_eq!(queue_wait(1000, 500.0), ms(2000));
        assert_eq!(queue_wait(1000, 0.0), Duration::ZERO);
        assert_eq!(queue_wait(1000, f64::NAN), Duration::ZERO);
        assert_eq!(queue_wait(0, 10.0), Duration::ZERO);
    }

    #[test]
    fn prefill_rate_sums_workers() {
        let l = WorkerLoad {
            compute_a: 0.1,
            chunk_tokens: 256,
            ..WorkerLoad::default()
        };
        let r = prefill_rate([&l, &l], &RateDefaults::default());
        assert!((r - 5120.0).abs() < 1e-6, "{r}");
    }
}
