//! How fast the gateway's dispatch slots turn over, measured: each request
//! that held a slot says its prompt tokens and how long it held it (from
//! the slot's grant to its response's end: the worker's own queue, the
//! prefill and the decode together). From the recent ones, the queue's
//! drain rate and the time until a slot frees follow — what a request
//! waiting in the queue will really see, where the cost model's prefill
//! rate alone leaves out decoding and the worker's queue.
//!
//! While every slot stays taken, the releases themselves say the drain
//! rate too (prompt tokens given back per second): when that is slower
//! than the holds say (the machine slowed down: a hold measured earlier
//! was shorter than the next will be), the slower one counts.
//!
//! A prediction can still be short: the fair queue lets a lighter tenant
//! ahead, decoding lengthens as batches grow. So the meter also keeps how
//! long the recent long waits really took against what was predicted for
//! them ([`SlotMeter::waited`]), and a prediction is scaled by the worst
//! recent ratio ([`SlotMeter::calibrate`]): a request admitted near its
//! deadline on a prediction that has been running short is refused at
//! once instead of timing out in the queue.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::load::secs;

/// The last `window` slot holds (see the module docs), and the holds
/// still open.
#[derive(Debug, Clone)]
pub struct SlotMeter {
    window: usize,
    holds: VecDeque<Hold>,
    tokens: u64,
    held: Duration,
    open: Open,
    /// Actual over predicted for the last `window` waits of at least
    /// [`CALIBRATED_WAIT`] predicted.
    ratios: VecDeque<f64>,
}

/// Waits predicted shorter than this are not compared with what they
/// took: a few milliseconds' jitter on a tiny prediction is no evidence
/// that long predictions run short.
pub const CALIBRATED_WAIT: Duration = Duration::from_secs(1);

/// The most a prediction is scaled up by ([`SlotMeter::calibrate`]).
pub const MAX_CALIBRATION: f64 = 3.0;

/// The slots held now: how many, their prompt tokens, and the sum of
/// their grant instants (as offsets from `base`), so that their total age
/// at any instant is one subtraction.
#[derive(Debug, Clone)]
struct Open {
    /// The first grant seen (offsets are from it).
    base: Option<Instant>,
    count: u64,
    tokens: u64,
    since_sum: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    tokens: u64,
    held: Duration,
    /// When the slot was given back.
    at: Instant,
    /// Whether every slot was taken (or requests waited) then.
    saturated: bool,
}

impl SlotMeter {
    /// A meter over the last `window` holds (at least one).
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            holds: VecDeque::new(),
            tokens: 0,
            held: Duration::ZERO,
            open: Open {
                base: None,
                count: 0,
                tokens: 0,
                since_sum: Duration::ZERO,
            },
            ratios: VecDeque::new(),
        }
    }

    /// A request predicted to wait `predicted` (uncalibrated: what
    /// [`SlotMeter::queue_wait`] said) waited `actual` before its slot was
    /// granted, or before it was refused at its deadline.
    pub fn waited(&mut self, predicted: Duration, actual: Duration) {
        if predicted < CALIBRATED_WAIT {
            return;
        }
        if self.ratios.len() == self.window {
            self.ratios.pop_front();
        }
        let r = actual.as_secs_f64() / predicted.as_secs_f64();
        self.ratios.push_back(r.clamp(0.0, MAX_CALIBRATION));
    }

    /// The factor predictions are scaled by: the worst recent ratio of a
    /// wait to its prediction, at least 1 (a prediction that ran long is
    /// not shortened), at most `MAX_CALIBRATION` (3).
    pub fn correction(&self) -> f64 {
        self.ratios.iter().copied().fold(1.0, f64::max)
    }

    /// `predicted` scaled by [`SlotMeter::correction`].
    pub fn calibrate(&self, predicted: Duration) -> Duration {
        predicted.mul_f64(self.correction())
    }

    /// A slot was granted at `at` to a request of `tokens` prompt tokens.
    pub fn opened(&mut self, tokens: u64, at: Instant) {
        let o = &mut self.open;
        let base = *o.base.get_or_insert(at);
        o.count += 1;
        o.tokens += tokens.max(1);
        o.since_sum += at.saturating_duration_since(base);
    }

    /// The slot granted at `since` for `tokens` was given back (recorded or
    /// not).
    pub fn closed(&mut self, tokens: u64, since: Instant) {
        let o = &mut self.open;
        let Some(base) = o.base else { return };
        o.count = o.count.saturating_sub(1);
        o.tokens = o.tokens.saturating_sub(tokens.max(1));
        o.since_sum = o
            .since_sum
            .saturating_sub(since.saturating_duration_since(base));
    }

    /// Prompt tokens per slot-second the open holds have served at most so
    /// far (they are not done): a bound that catches holds growing longer
    /// than the window measured (the machine slowed, decoding piled up).
    /// `None` with nothing open or no age yet.
    fn open_rate(&self, now: Instant) -> Option<f64> {
        let o = &self.open;
        let base = o.base.filter(|_| o.count > 0)?;
        let now = now.saturating_duration_since(base).as_secs_f64() * o.count as f64;
        let age = now - o.since_sum.as_secs_f64();
        (age > 0.0).then(|| o.tokens as f64 / age)
    }

    /// A request of `tokens` prompt tokens gave its slot back at `at`
    /// after `held`; `saturated`: every slot was taken or requests waited.
    pub fn record(&mut self, tokens: u64, held: Duration, at: Instant, saturated: bool) {
        let tokens = tokens.max(1);
        if self.holds.len() == self.window
            && let Some(h) = self.holds.pop_front()
        {
            self.tokens -= h.tokens;
            self.held = self.held.saturating_sub(h.held);
        }
        self.holds.push_back(Hold {
            tokens,
            held,
            at,
            saturated,
        });
        self.tokens += tokens;
        self.held += held;
    }

    /// Prompt tokens given back per second over the window, when every
    /// release in it came while the slots were all taken (otherwise the
    /// releases measure the arrivals, not the drain); `None` else.
    pub fn release_rate(&self) -> Option<f64> {
        let (first, last) = (self.holds.front()?, self.holds.back()?);
        if self.holds.len() < 2 || !self.holds.iter().all(|h| h.saturated) {
            return None;
        }
        let span = last.at.saturating_duration_since(first.at).as_secs_f64();
        let tokens = self.tokens - first.tokens;
        (span > 0.0).then(|| tokens as f64 / span)
    }

    /// Holds measured (at most the window).
    pub fn len(&self) -> usize {
        self.holds.len()
    }

    /// Whether nothing was measured yet.
    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }

    /// Prompt tokens one slot serves per second; `None` until measured.
    pub fn tokens_per_slot_sec(&self) -> Option<f64> {
        let h = self.held.as_secs_f64();
        (h > 0.0).then(|| self.tokens as f64 / h)
    }

    /// The mean hold; `None` until measured.
    pub fn mean_hold(&self) -> Option<Duration> {
        let n = u32::try_from(self.holds.len()).ok().filter(|&n| n > 0)?;
        Some(self.held / n)
    }

    /// Predicted wait until a request with `work_ahead` prompt tokens
    /// queued ahead of it (its own included) gets one of `slots` busy
    /// slots: that work at the slots' measured rate, or at the rate the
    /// holds open at `now` have kept so far when that is slower. `None`
    /// until measured (or with no slot): the caller decides on other
    /// evidence.
    pub fn queue_wait(&self, work_ahead: u64, slots: usize, now: Instant) -> Option<Duration> {
        let mut per_slot = self.tokens_per_slot_sec()?;
        if let Some(r) = self.open_rate(now) {
            per_slot = per_slot.min(r);
        }
        let mut rate = per_slot * slots as f64;
        if let Some(r) = self.release_rate() {
            rate = rate.min(r);
        }
        (rate > 0.0).then(|| secs(work_ahead as f64 / rate))
    }

    /// Predicted time until the next of `slots` busy slots frees: the mean
    /// hold shared among them. `None` until measured (or with no slot).
    pub fn next_free(&self, slots: usize) -> Option<Duration> {
        let n = u32::try_from(slots).ok().filter(|&n| n > 0)?;
        Some(self.mean_hold()? / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    /// Records holds given back one second apart, from `t0`.
    fn holds(m: &mut SlotMeter, t0: Instant, holds: &[(u64, f64)], saturated: bool) {
        for (i, &(t, h)) in holds.iter().enumerate() {
            m.record(t, s(h), t0 + s(i as f64), saturated);
        }
    }

    #[test]
    fn unmeasured_says_nothing() {
        let t0 = Instant::now();
        let m = SlotMeter::new(8);
        assert!(m.is_empty());
        assert_eq!(m.tokens_per_slot_sec(), None);
        assert_eq!(m.queue_wait(1000, 4, t0), None);
        assert_eq!(m.next_free(4), None);
    }

    #[test]
    fn rates_come_from_the_holds() {
        let t0 = Instant::now();
        let mut m = SlotMeter::new(8);
        holds(&mut m, t0, &[(100, 1.0), (300, 3.0)], false);
        assert_eq!(m.tokens_per_slot_sec(), Some(100.0));
        assert_eq!(m.mean_hold(), Some(s(2.0)));
        // 2000 tokens ahead, 4 slots at 100 tokens/s each: 5 s.
        assert_eq!(m.queue_wait(2000, 4, t0), Some(s(5.0)));
        assert_eq!(m.next_free(4), Some(s(0.5)));
        assert_eq!(m.next_free(0), None);
        assert_eq!(m.queue_wait(2000, 0, t0), None);
    }

    #[test]
    fn the_window_forgets_old_holds() {
        let mut m = SlotMeter::new(2);
        holds(
            &mut m,
            Instant::now(),
            &[(1000, 1.0), (100, 1.0), (100, 1.0)],
            false,
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m.tokens_per_slot_sec(), Some(100.0));
    }

    #[test]
    fn instant_holds_do_not_divide_by_zero() {
        let t0 = Instant::now();
        let mut m = SlotMeter::new(4);
        m.record(0, Duration::ZERO, t0, true);
        assert_eq!(m.tokens_per_slot_sec(), None);
        assert_eq!(m.queue_wait(10, 1, t0), None);
        assert_eq!(m.next_free(1), Some(Duration::ZERO));
    }

    #[test]
    fn saturated_releases_slower_than_the_holds_say_count() {
        let t0 = Instant::now();
        // Holds say 100 tokens per slot-second: 400/s on 4 slots; the
        // releases, one a second, give back only 100/s.
        let mut m = SlotMeter::new(8);
        holds(&mut m, t0, &[(100, 1.0), (100, 1.0), (100, 1.0)], true);
        assert_eq!(m.release_rate(), Some(100.0));
        assert_eq!(m.queue_wait(1000, 4, t0), Some(s(10.0)));
        // Not saturated: the releases follow the arrivals; the holds rule.
        let mut m = SlotMeter::new(8);
        holds(&mut m, t0, &[(100, 1.0), (100, 1.0), (100, 1.0)], false);
        assert_eq!(m.release_rate(), None);
        assert_eq!(m.queue_wait(1000, 4, t0), Some(s(2.5)));
        // Releases faster than the holds say: the holds still rule.
        let mut m = SlotMeter::new(8);
        holds(&mut m, t0, &[(1000, 1.0), (1000, 1.0)], true);
        assert_eq!(m.queue_wait(1000, 1, t0), Some(s(1.0)));
    }

    /// Holds open longer than the window's holds say slow the prediction
    /// down (the holds measured were from a quieter spell); young ones do
    /// not speed it up.
    #[test]
    fn open_holds_older_than_the_measured_ones_count() {
        let t0 = Instant::now();
        let mut m = SlotMeter::new(8);
        holds(&mut m, t0, &[(100, 1.0), (100, 1.0)], false);
        // 4 slots at 100 tokens per slot-second: 1000 tokens in 2.5 s.
        assert_eq!(m.queue_wait(1000, 4, t0), Some(s(2.5)));
        // Two requests of 100 tokens each, granted at t0, still held 4 s
        // later: at most 25 tokens per slot-second so far.
        m.opened(100, t0);
        m.opened(100, t0);
        assert_eq!(m.queue_wait(1000, 4, t0 + s(0.5)), Some(s(2.5)));
        assert_eq!(m.queue_wait(1000, 4, t0 + s(4.0)), Some(s(10.0)));
        // Given back: the bound goes with them.
        m.closed(100, t0);
        m.closed(100, t0);
        assert_eq!(m.queue_wait(1000, 4, t0 + s(4.0)), Some(s(2.5)));
    }

    /// Waits that ran longer than predicted scale later predictions by the
    /// worst recent ratio; short predictions and waits that ran short do
    /// not; the window forgets.
    #[test]
    fn long_waits_that_ran_short_calibrate_the_prediction() {
        let mut m = SlotMeter::new(2);
        assert_eq!(m.calibrate(s(10.0)), s(10.0));
        // Tiny predictions are not evidence.
        m.waited(s(0.1), s(5.0));
        assert_eq!(m.correction(), 1.0);
        // A wait shorter than predicted does not shorten predictions.
        m.waited(s(10.0), s(5.0));
        assert_eq!(m.correction(), 1.0);
        m.waited(s(10.0), s(15.0));
        assert_eq!(m.calibrate(s(10.0)), s(15.0));
        // Bounded.
        m.waited(s(2.0), s(60.0));
        assert_eq!(m.correction(), MAX_CALIBRATION);
        // Forgotten after `window` more.
        m.waited(s(10.0), s(10.0));
        m.waited(s(10.0), s(11.0));
        assert!((m.correction() - 1.1).abs() < 1e-9);
    }
}
