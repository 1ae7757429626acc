//! The gateway's in-flight ledger: work it has sent to each worker that the
//! worker's last load report does not show yet, so that placement does not
//! wait for reports (DESIGN.md section 5).
//!
//! A request's predicted work is added when it is dispatched and removed
//! when it completes, or when a report arrives that already counts it (one
//! whose "as of" instant is no earlier than the dispatch). Entries older
//! than the ledger's maximum age are dropped by [`Ledger::prune`], so a lost
//! completion cannot inflate a worker's load forever.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::load::WorkerLoad;

/// Work a request adds to a worker's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Work {
    /// Prompt tokens it adds to the compute queue.
    pub compute_tokens: u64,
    /// KV bytes it adds to the I/O queue.
    pub io_bytes: u64,
}

impl Work {
    fn add(&mut self, w: Work) {
        self.compute_tokens = self.compute_tokens.saturating_add(w.compute_tokens);
        self.io_bytes = self.io_bytes.saturating_add(w.io_bytes);
    }

    fn sub(&mut self, w: Work) {
        self.compute_tokens = self.compute_tokens.saturating_sub(w.compute_tokens);
        self.io_bytes = self.io_bytes.saturating_sub(w.io_bytes);
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    worker: usize,
    work: Work,
    dispatched: Instant,
}

/// Outstanding work per worker, keyed by request id.
#[derive(Debug)]
pub struct Ledger {
    entries: HashMap<u64, Entry>,
    totals: HashMap<usize, Work>,
    max_age: Duration,
}

impl Ledger {
    /// An empty ledger whose entries live at most `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            totals: HashMap::new(),
            max_age,
        }
    }

    /// Records that request `id` was sent to `worker` at `now` with the
    /// predicted `work`. A second dispatch of the same id replaces the first
    /// (a retry on another worker).
    pub fn dispatch(&mut self, id: u64, worker: usize, work: Work, now: Instant) {
        self.remove(id);
        self.entries.insert(
            id,
            Entry {
                worker,
                work,
                dispatched: now,
            },
        );
        self.totals.entry(worker).or_default().add(work);
    }

    /// Request `id` finished (or failed): its work is no longer pending.
    /// Returns whether it was still in the ledger.
    pub fn complete(&mut self, id: u64) -> bool {
        self.remove(id)
    }

    /// A load report from `worker` arrived that counts everything dispatched
    /// to it up to `as_of`. Pass an instant the report is sure to include:
    /// e.g. when the gateway sent the report request on the same ordered
    /// connection as its dispatches, never the receive time of a report the
    /// worker pushed. Returns how many entries it cleared.
    pub fn on_report(&mut self, worker: usize, as_of: Instant) -> usize {
        let before = self.entries.len();
        let totals = &mut self.totals;
        self.entries.retain(|_, e| {
            let counted = e.worker == worker && e.dispatched <= as_of;
            if counted {
                totals.entry(worker).or_default().sub(e.work);
            }
            !counted
        });
        self.drop_empty_totals();
        before - self.entries.len()
    }

    /// Drops entries dispatched more than the maximum age before `now`.
    /// Returns how many it dropped.
    pub fn prune(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let (totals, max_age) = (&mut self.totals, self.max_age);
        self.entries.retain(|_, e| {
            let stale = now.saturating_duration_since(e.dispatched) > max_age;
            if stale {
                totals.entry(e.worker).or_default().sub(e.work);
            }
            !stale
        });
        self.drop_empty_totals();
        before - self.entries.len()
    }

    /// Work sent to `worker` that its reports do not show yet.
    pub fn outstanding(&self, worker: usize) -> Work {
        self.totals.get(&worker).copied().unwrap_or_default()
    }

    /// `reported` plus the ledger's outstanding work for `worker`.
    pub fn effective_load(&self, worker: usize, reported: &WorkerLoad) -> WorkerLoad {
        let w = self.outstanding(worker);
        WorkerLoad {
            queued_compute_tokens: reported
                .queued_compute_tokens
                .saturating_add(w.compute_tokens),
            queued_io_bytes: reported.queued_io_bytes.saturating_add(w.io_bytes),
            ..*reported
        }
    }

    /// Requests in the ledger.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the ledger holds no request.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn remove(&mut self, id: u64) -> bool {
        match self.entries.remove(&id) {
            Some(e) => {
                self.totals.entry(e.worker).or_default().sub(e.work);
                self.drop_empty_totals();
                true
            }
            None => false,
        }
    }

    fn drop_empty_totals(&mut self) {
        self.totals.retain(|_, w| *w != Work::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(c: u64, io: u64) -> Work {
        Work {
            compute_tokens: c,
            io_bytes: io,
        }
    }

    #[test]
    fn dispatch_adds_and_complete_removes() {
        let t0 = Instant::now();
        let mut l = Ledger::new(Duration::from_secs(60));
        l.dispatch(1, 0, work(100, 1000), t0);
        l.dispatch(2, 0, work(50, 0), t0);
        l.dispatch(3, 1, work(7, 7), t0);
        assert_eq!(l.outstanding(0), work(150, 1000));
        let reported = WorkerLoad {
            queued_compute_tokens: 10,
            queued_io_bytes: 20,
            compute_a: 0.5,
            ..WorkerLoad::default()
        };
        let eff = l.effective_load(0, &reported);
        assert_eq!(eff.queued_compute_tokens, 160);
        assert_eq!(eff.queued_io_bytes, 1020);
        assert_eq!(eff.compute_a, 0.5);
        assert!(l.complete(1));
        assert!(!l.complete(1));
        assert_eq!(l.outstanding(0), work(50, 0));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn newer_report_clears_only_what_it_counts() {
        let t0 = Instant::now();
        let mut l = Ledger::new(Duration::from_secs(60));
        l.dispatch(1, 0, work(100, 0), t0);
        l.dispatch(2, 0, work(10, 0), t0 + Duration::from_millis(20));
        l.dispatch(3, 1, work(1, 0), t0);
        assert_eq!(l.on_report(0, t0 + Duration::from_millis(10)), 1);
        assert_eq!(l.outstanding(0), work(10, 0));
        assert_eq!(l.outstanding(1), work(1, 0));
        // The completion after the report changes nothing more.
        assert!(!l.complete(1));
        assert_eq!(l.outstanding(0), work(10, 0));
    }

    #[test]
    fn redispatch_moves_the_work() {
        let t0 = Instant::now();
        let mut l = Ledger::new(Duration::from_secs(60));
        l.dispatch(1, 0, work(100, 0), t0);
        l.dispatch(1, 1, work(100, 0), t0);
        assert_eq!(l.outstanding(0), Work::default());
        assert_eq!(l.outstanding(1), work(100, 0));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn prune_drops_old_entries() {
        let t0 = Instant::now();
        let mut l = Ledger::new(Duration::from_secs(30));
        l.dispatch(1, 0, work(100, 0), t0);
        l.dispatch(2, 0, work(1, 0), t0 + Duration::from_secs(20));
        assert_eq!(l.prune(t0 + Duration::from_secs(30)), 0);
        assert_eq!(l.prune(t0 + Duration::from_secs(31)), 1);
        assert_eq!(l.outstanding(0), work(1, 0));
        assert_eq!(l.prune(t0 + Duration::from_secs(60)), 1);
        assert!(l.is_empty());
        assert_eq!(l.outstanding(0), Work::default());
    }
}
