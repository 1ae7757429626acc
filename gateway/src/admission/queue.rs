//! The tenants' fair queue ([`cake_policy::FairQueue`]) in front of the
//! gateway's dispatch slots. A request takes a slot at once when one is
//! free and no one is waiting; otherwise it waits, served by priority then
//! weight, until a slot frees or its deadline passes. Slots: at most
//! `policy.max_concurrent` in all, and `policy.max_in_flight_per_worker`
//! per healthy worker. [`DispatchSlots`] owns the queue, the slot count
//! and the meter; a [`SlotGuard`] points back at it alone.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use cake_policy::{FairQueue, QueueFull, Share, SlotMeter};
use tokio::sync::oneshot;

use crate::config::PolicyConfig;
use crate::telemetry as tm;
use crate::worker::WorkerPool;

/// Slot holds the queue's drain rate is measured over.
const METER_WINDOW: usize = 32;

struct Waiter {
    tx: oneshot::Sender<SlotGuard>,
    cost: u64,
    /// When it was queued, and the wait predicted for it then
    /// (uncalibrated): what it took goes back into the meter.
    queued: Instant,
    predicted: Duration,
}

struct Sched {
    queue: FairQueue<Waiter, String>,
    running: usize,
    meter: SlotMeter,
    limits: SlotLimits,
}

/// The policy's slot counts (replaced on reload).
#[derive(Debug, Clone, Copy)]
struct SlotLimits {
    max_concurrent: u32,
    per_worker: u32,
    priority_headroom: u32,
}

impl SlotLimits {
    fn of(p: &PolicyConfig) -> SlotLimits {
        SlotLimits {
            max_concurrent: p.max_concurrent,
            per_worker: p.max_in_flight_per_worker,
            priority_headroom: p.priority_headroom,
        }
    }
}

/// See the module docs.
pub struct DispatchSlots {
    sched: Mutex<Sched>,
    pool: Arc<WorkerPool>,
}

impl DispatchSlots {
    pub fn new(p: &PolicyConfig, pool: Arc<WorkerPool>) -> DispatchSlots {
        DispatchSlots {
            sched: Mutex::new(Sched {
                queue: FairQueue::new(p.fair_quantum_tokens, p.queue_per_tenant, p.queue_total),
                running: 0,
                meter: SlotMeter::new(METER_WINDOW),
                limits: SlotLimits::of(p),
            }),
            pool,
        }
    }

    /// A reloaded policy's slot counts, queue bounds and quantum.
    pub fn set_limits(self: &Arc<Self>, p: &PolicyConfig) {
        let mut s = self.sched.lock();
        s.queue
            .set_limits(p.fair_quantum_tokens, p.queue_per_tenant, p.queue_total);
        s.limits = SlotLimits::of(p);
        // More slots may be free now.
        self.pump_locked(&mut s);
    }
}

/// One dispatch slot, given back (and the next waiter served) when
/// dropped; how long it was held goes into the queue's [`SlotMeter`].
pub struct SlotGuard {
    slots: Arc<DispatchSlots>,
    armed: bool,
    since: Instant,
    cost: u64,
}

impl SlotGuard {
    /// A slot granted now, counted open in the meter (under the sched lock).
    fn new(slots: &Arc<DispatchSlots>, s: &mut Sched, cost: u64) -> SlotGuard {
        let since = Instant::now();
        s.meter.opened(cost, since.into_std());
        SlotGuard {
            slots: slots.clone(),
            armed: true,
            since,
            cost,
        }
    }

    /// A slot that was never used (its waiter left): given back without a
    /// hold to record.
    fn disarm(&mut self, s: &mut Sched) {
        self.armed = false;
        s.running -= 1;
        s.meter.closed(self.cost, self.since.into_std());
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.armed {
            let mut s = self.slots.sched.lock();
            let cap = self.slots.capacity(&s);
            let saturated = s.running >= cap || !s.queue.is_empty();
            s.running = s.running.saturating_sub(1);
            s.meter.closed(self.cost, self.since.into_std());
            s.meter.record(
                self.cost,
                self.since.elapsed(),
                Instant::now().into_std(),
                saturated,
            );
            self.slots.pump_locked(&mut s);
        }
    }
}

/// A request's predicted wait before its worker starts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wait {
    /// In the gateway's queue, until a dispatch slot is its: the
    /// measured prediction scaled by how long recent waits ran past theirs
    /// ([`SlotMeter::calibrate`]).
    pub queue: Duration,
    /// The same before that scaling: what the waiter's real wait is
    /// compared with.
    pub queue_measured: Duration,
    /// In the chosen worker's own queue (its backlog ahead).
    pub worker: Duration,
    /// Until the next dispatch slot frees (zero when one is free now).
    pub next_slot: Duration,
}

impl Wait {
    /// Queue and worker together: what the queue deadline bounds.
    pub fn total(&self) -> Duration {
        self.queue.saturating_add(self.worker)
    }

    /// When a request refused for this wait should come back: once the
    /// backlog ahead has drained enough for it to fit within `deadline`,
    /// and no sooner than the next slot frees. Whole seconds, at least 1,
    /// are the header's business.
    pub fn retry_after(&self, deadline: Duration) -> Duration {
        self.total().saturating_sub(deadline).max(self.next_slot)
    }
}

impl DispatchSlots {
    /// Dispatch slots now: the gateway's cap and the healthy workers' caps.
    fn capacity(&self, s: &Sched) -> usize {
        let l = s.limits;
        let per_worker = match l.per_worker {
            0 => usize::MAX,
            n => (n as usize).saturating_mul(self.pool.healthy().max(1)),
        };
        match l.max_concurrent {
            0 => per_worker,
            n => per_worker.min(n as usize),
        }
    }

    /// Slots beyond [`DispatchSlots::capacity`] that requests of priority
    /// above 0 may take.
    fn headroom(&self, s: &Sched) -> usize {
        if s.limits.per_worker == 0 {
            return 0;
        }
        (s.limits.priority_headroom as usize).saturating_mul(self.pool.healthy().max(1))
    }

    /// The gateway part of a new request's predicted [`Wait`] (its
    /// `worker` part left at zero): nothing when a slot is free and no one
    /// waits; else the work queued ahead of it, its own included, at the
    /// slots' measured rate ([`SlotMeter`]), or at `fallback_rate` prompt
    /// tokens per second (the fleet's prefill rate) before any slot was
    /// given back.
    pub fn queue_wait(&self, tenant: &str, share: Share, cost: u64, fallback_rate: f64) -> Wait {
        let s = self.sched.lock();
        let cap = self.capacity(&s);
        if cap == usize::MAX || (s.running < cap && s.queue.is_empty()) {
            return Wait::default();
        }
        let ahead = s.queue.work_ahead(&tenant.to_string(), share, cost);
        let measured = s
            .meter
            .queue_wait(ahead, cap, Instant::now().into_std())
            .unwrap_or_else(|| cake_policy::queue_wait(ahead, fallback_rate));
        Wait {
            queue: s.meter.calibrate(measured),
            queue_measured: measured,
            worker: Duration::ZERO,
            next_slot: s.meter.next_free(cap).unwrap_or_default(),
        }
    }

    /// Predicted time until one of the requests in flight gives its slot
    /// back: the measured mean hold shared among them (zero before any
    /// was measured). What a full worker's refusal says to wait.
    pub fn next_slot(&self) -> Duration {
        let s = self.sched.lock();
        s.meter.next_free(s.running.max(1)).unwrap_or_default()
    }

    /// Queues a request predicted to wait `predicted` (the
    /// `queue_measured` of its [`Wait`]); the receiver yields its slot when
    /// it is served, and fails when its deadline passed first.
    pub fn enqueue(
        self: &Arc<Self>,
        tenant: &str,
        share: Share,
        cost: u64,
        deadline: Instant,
        predicted: Duration,
    ) -> Result<oneshot::Receiver<SlotGuard>, QueueFull<()>> {
        let (tx, rx) = oneshot::channel();
        let mut s = self.sched.lock();
        self.pump_locked(&mut s);
        // A priority tenant with no one of its level or above waiting may
        // take a headroom slot at once.
        let ahead = s
            .queue
            .work_ahead(&tenant.to_string(), share, cost)
            .saturating_sub(cost.max(1));
        if share.priority > 0
            && ahead == 0
            && s.running < self.capacity(&s).saturating_add(self.headroom(&s))
        {
            s.running += 1;
            let g = SlotGuard::new(self, &mut s, cost);
            tm::queue_waiting(s.queue.len(), s.running);
            if let Err(mut g) = tx.send(g) {
                g.disarm(&mut s);
            }
            return Ok(rx);
        }
        s.queue
            .push(
                tenant.to_string(),
                share,
                cost,
                Waiter {
                    tx,
                    cost,
                    queued: Instant::now(),
                    predicted,
                },
                Some(deadline.into_std()),
            )
            .map_err(|e| QueueFull {
                bound: e.bound,
                limit: e.limit,
                item: (),
            })?;
        self.pump_locked(&mut s);
        Ok(rx)
    }

    /// Refuses expired waiters and serves the queue while slots are free.
    pub fn pump(self: &Arc<Self>) {
        let mut s = self.sched.lock();
        self.pump_locked(&mut s);
    }

    fn pump_locked(self: &Arc<Self>, s: &mut Sched) {
        let now = Instant::now();
        // Dropping an expired waiter's sender tells it at once; its wait,
        // the deadline, is the worst case the calibration must see.
        for (_, w) in s.queue.remove_expired(now.into_std()) {
            s.meter.waited(w.predicted, now - w.queued);
        }
        let cap = self.capacity(s);
        while s.running < cap {
            let Some((_, w)) = s.queue.pop(now.into_std()) else {
                break;
            };
            s.meter.waited(w.predicted, now - w.queued);
            s.running += 1;
            let g = SlotGuard::new(self, s, w.cost);
            if let Err(mut g) = w.tx.send(g) {
                // The waiter left (client gone or timed out).
                g.disarm(s);
            }
        }
        tm::queue_waiting(s.queue.len(), s.running);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;
    use crate::worker::{WorkerError, mock_pool};

    fn slots(workers: usize, p: &PolicyConfig) -> (Arc<WorkerPool>, Arc<DispatchSlots>) {
        let (_mocks, pool) = mock_pool(workers, 1);
        (pool.clone(), Arc::new(DispatchSlots::new(p, pool)))
    }

    fn policy(per_worker: u32) -> PolicyConfig {
        PolicyConfig {
            max_in_flight_per_worker: per_worker,
            priority_headroom: 0,
            ..PolicyConfig::default()
        }
    }

    const PLAIN: Share = Share {
        priority: 0,
        weight: 1,
    };

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    type Rx = oneshot::Receiver<SlotGuard>;

    fn enqueue(d: &Arc<DispatchSlots>, tenant: &str, share: Share) -> Rx {
        d.enqueue(tenant, share, 10, far(), Duration::ZERO).unwrap()
    }

    /// Slots are per healthy worker: with two workers of one slot each two
    /// requests get theirs at once, a third waits; a worker going down
    /// takes its slot away; a slot given back serves the waiter.
    #[tokio::test]
    async fn slots_follow_the_healthy_workers_and_serve_the_next_waiter() {
        let (pool, d) = slots(2, &policy(1));
        let a = enqueue(&d, "t", PLAIN).try_recv().unwrap();
        let b = enqueue(&d, "t", PLAIN).try_recv().unwrap();
        let mut c = enqueue(&d, "t", PLAIN);
        assert_eq!(c.try_recv().err(), Some(TryRecvError::Empty));
        drop(a);
        let c = c.try_recv().unwrap();

        pool.failure(&pool.slots()[1], &WorkerError::Unreachable("test".into()));
        drop(b);
        let mut e = enqueue(&d, "t", PLAIN);
        assert_eq!(
            e.try_recv().err(),
            Some(TryRecvError::Empty),
            "one worker up: one slot, held by c"
        );
        drop(c);
        assert!(e.try_recv().is_ok());
    }

    /// Waiters are served by priority, then fairly by tenant; a waiter
    /// who left does not keep the slot it was given.
    #[tokio::test]
    async fn waiters_are_served_by_priority_and_a_gone_one_is_passed_over() {
        let (_pool, d) = slots(1, &policy(1));
        let held = enqueue(&d, "a", PLAIN).try_recv().unwrap();
        let mut low = enqueue(&d, "a", PLAIN);
        let gone = enqueue(
            &d,
            "b",
            Share {
                priority: 2,
                weight: 1,
            },
        );
        let mut high = enqueue(
            &d,
            "c",
            Share {
                priority: 1,
                weight: 1,
            },
        );
        drop(gone);
        drop(held);
        // The highest priority left; its slot given back at once, the
        // next one is served.
        let high = high.try_recv().unwrap();
        assert_eq!(low.try_recv().err(), Some(TryRecvError::Empty));
        drop(high);
        assert!(low.try_recv().is_ok());
    }

    /// A waiter whose deadline passes is refused (its receiver fails) the
    /// next time the queue is pumped; a full queue refuses at once.
    #[tokio::test(start_paused = true)]
    async fn deadlines_and_bounds_refuse() {
        let p = PolicyConfig {
            queue_total: 1,
            ..policy(1)
        };
        let (_pool, d) = slots(1, &p);
        let _held = enqueue(&d, "a", PLAIN).try_recv().unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        let mut late = d.enqueue("a", PLAIN, 10, soon, Duration::ZERO).unwrap();
        let full = d.enqueue("b", PLAIN, 10, far(), Duration::ZERO);
        assert!(full.is_err(), "queue_total = 1");
        tokio::time::advance(Duration::from_millis(50)).await;
        d.pump();
        assert_eq!(late.try_recv().err(), Some(TryRecvError::Empty));
        tokio::time::advance(Duration::from_millis(100)).await;
        d.pump();
        assert_eq!(late.try_recv().err(), Some(TryRecvError::Closed));
        assert!(d.enqueue("b", PLAIN, 10, far(), Duration::ZERO).is_ok());
    }

    /// With the slots full, a priority tenant with no one of its level
    /// ahead takes a headroom slot at once; a plain one waits.
    #[tokio::test]
    async fn priority_headroom_is_taken_at_once() {
        let p = PolicyConfig {
            priority_headroom: 1,
            ..policy(1)
        };
        let (_pool, d) = slots(1, &p);
        let _held = enqueue(&d, "a", PLAIN).try_recv().unwrap();
        let mut plain = enqueue(&d, "a", PLAIN);
        assert_eq!(plain.try_recv().err(), Some(TryRecvError::Empty));
        let vip = Share {
            priority: 1,
            weight: 1,
        };
        assert!(enqueue(&d, "v", vip).try_recv().is_ok());
        assert_eq!(plain.try_recv().err(), Some(TryRecvError::Empty));
    }
}
