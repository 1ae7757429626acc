//! Moving averages a worker reports for placement: the chunk compute cost
//! `t(i) = a + b·i` and the load bandwidth.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Weight of the newest sample in the exponential averages.
const ALPHA: f64 = 0.1;

/// An exponentially weighted least-squares fit of chunk compute time
/// against chunk index.
#[derive(Debug, Default)]
pub(crate) struct ComputeMeter {
    sums: Mutex<Sums>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
}

impl ComputeMeter {
    /// Records that computing chunk `index` (at positions `index·C..`) of
    /// `tokens` tokens took `secs`, scaled to a full chunk of `chunk`.
    pub(crate) fn record(&self, index: usize, tokens: usize, chunk: usize, secs: f64) {
        if tokens == 0 {
            return;
        }
        let y = secs * chunk as f64 / tokens as f64;
        let x = index as f64;
        let mut s = self.sums.lock();
        let keep = 1.0 - ALPHA;
        s.w = s.w * keep + 1.0;
        s.x = s.x * keep + x;
        s.y = s.y * keep + y;
        s.xx = s.xx * keep + x * x;
        s.xy = s.xy * keep + x * y;
    }

    /// `(a, b)` in seconds; `(0, 0)` until measured. With samples at one
    /// index only, `b` is 0.
    pub(crate) fn fit(&self) -> (f64, f64) {
        let s = *self.sums.lock();
        if s.w <= 0.0 {
            return (0.0, 0.0);
        }
        let (mx, my) = (s.x / s.w, s.y / s.w);
        let var = s.xx / s.w - mx * mx;
        let b = if var > 1e-9 {
            ((s.xy / s.w - mx * my) / var).max(0.0)
        } else {
            0.0
        };
        ((my - b * mx).max(0.0), b)
    }
}

/// Bytes queued or in flight on a worker's I/O side, and the bandwidth
/// measured over the time at least one load was in flight.
#[derive(Debug, Default)]
pub(crate) struct IoMeter {
    queued: AtomicU64,
    inner: Mutex<Busy>,
}

#[derive(Debug, Default)]
struct Busy {
    inflight: u64,
    since: Option<Instant>,
    bytes: f64,
    secs: f64,
}

impl IoMeter {
    pub(crate) fn plan(&self, bytes: u64) {
        self.queued.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn unplan(&self, bytes: u64) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(bytes))
            });
    }

    pub(crate) fn begin(&self) {
        let mut b = self.inner.lock();
        if b.inflight == 0 {
            b.since = Some(Instant::now());
        }
        b.inflight += 1;
    }

    pub(crate) fn end(&self, bytes: u64, ok: bool) {
        self.unplan(bytes);
        let mut b = self.inner.lock();
        b.inflight = b.inflight.saturating_sub(1);
        let now = Instant::now();
        if let Some(since) = b.since {
            let dt = (now - since).as_secs_f64();
            // Decay old busy time so the rate follows the link's changes.
            b.secs = b.secs * (1.0 - ALPHA) + dt;
            b.bytes *= 1.0 - ALPHA;
            b.since = if b.inflight > 0 { Some(now) } else { None };
        }
        if ok {
            b.bytes += bytes as f64;
        }
    }

    /// `n` loads dropped before finishing.
    pub(crate) fn abandon(&self, n: u64) {
        let mut b = self.inner.lock();
        b.inflight = b.inflight.saturating_sub(n);
        if b.inflight == 0 {
            b.since = None;
        }
    }

    pub(crate) fn queued_bytes(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Bytes/s while busy; 0 until measured.
    pub(crate) fn bandwidth(&self) -> f64 {
        let b = self.inner.lock();
        if b.secs > Duration::from_micros(10).as_secs_f64() {
            b.bytes / b.secs
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_fit_recovers_a_line() {
        let m = ComputeMeter::default();
        for round in 0..5 {
            for i in 0..16 {
                m.record(i, 256, 256, 0.01 + 0.002 * i as f64 + round as f64 * 0.0);
            }
        }
        let (a, b) = m.fit();
        assert!(
            (a - 0.01).abs() < 1e-6 && (b - 0.002).abs() < 1e-6,
            "{a} {b}"
        );
        // A partial chunk is scaled to a full one.
        let m = ComputeMeter::default();
        m.record(0, 128, 256, 0.005);
        assert!((m.fit().0 - 0.01).abs() < 1e-9);
    }
}
