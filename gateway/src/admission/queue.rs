//! The tenants' fair queue ([`cake_policy::FairQueue`]) in front of the
//! gateway's dispatch slots. A request takes a slot at once when one is
//! free and no one is waiting; otherwise it waits, served by priority then
//! weight, until a slot frees or its deadline passes. Slots: at most
//! `policy.max_concurrent` in all, and `policy.max_in_flight_per_worker`
//! per healthy worker.

use std::sync::Arc;
use std::time::Instant;

use cake_policy::{FairQueue, QueueFull, Share};
use tokio::sync::oneshot;

use super::Admission;
use crate::config::PolicyConfig;
use crate::telemetry as tm;

struct Waiter {
    tx: oneshot::Sender<SlotGuard>,
}

pub(super) struct Sched {
    queue: FairQueue<Waiter, String>,
    running: usize,
}

impl Sched {
    pub(super) fn new(p: &PolicyConfig) -> Sched {
        Sched {
            queue: FairQueue::new(p.fair_quantum_tokens, p.queue_per_tenant, p.queue_total),
            running: 0,
        }
    }

    /// A reloaded policy's queue bounds and quantum.
    pub(super) fn set_limits(&mut self, p: &PolicyConfig) {
        self.queue
            .set_limits(p.fair_quantum_tokens, p.queue_per_tenant, p.queue_total);
    }
}

/// One dispatch slot, given back (and the next waiter served) when
/// dropped.
pub struct SlotGuard {
    adm: Arc<Admission>,
    armed: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.armed {
            let mut s = self.adm.sched.lock().unwrap_or_else(|e| e.into_inner());
            s.running = s.running.saturating_sub(1);
            self.adm.pump_locked(&mut s);
        }
    }
}

impl Admission {
    /// Dispatch slots now: the gateway's cap and the healthy workers' caps.
    fn capacity(&self) -> usize {
        let p = &self.live.load().policy;
        let per_worker = match p.max_in_flight_per_worker {
            0 => usize::MAX,
            n => (n as usize).saturating_mul(self.pool.healthy().max(1)),
        };
        match p.max_concurrent {
            0 => per_worker,
            n => per_worker.min(n as usize),
        }
    }

    /// Prompt tokens queued ahead of a new request of `cost` from `tenant`
    /// (its own cost not counted).
    /// Slots beyond [`Admission::capacity`] that requests of priority above
    /// 0 may take.
    fn headroom(&self) -> usize {
        let p = &self.live.load().policy;
        if p.max_in_flight_per_worker == 0 {
            return 0;
        }
        (p.priority_headroom as usize).saturating_mul(self.pool.healthy().max(1))
    }

    pub fn work_ahead(&self, tenant: &str, share: Share, cost: u64) -> u64 {
        let s = self.sched.lock().unwrap_or_else(|e| e.into_inner());
        s.queue
            .work_ahead(&tenant.to_string(), share, cost)
            .saturating_sub(cost.max(1))
    }

    /// Queues a request; the receiver yields its slot when it is served,
    /// and fails when its deadline passed first.
    pub fn enqueue(
        self: &Arc<Self>,
        tenant: &str,
        share: Share,
        cost: u64,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<SlotGuard>, QueueFull<()>> {
        let (tx, rx) = oneshot::channel();
        let mut s = self.sched.lock().unwrap_or_else(|e| e.into_inner());
        self.pump_locked(&mut s);
        // A priority tenant with no one of its level or above waiting may
        // take a headroom slot at once.
        let ahead = s
            .queue
            .work_ahead(&tenant.to_string(), share, cost)
            .saturating_sub(cost.max(1));
        if share.priority > 0
            && ahead == 0
            && s.running < self.capacity().saturating_add(self.headroom())
        {
            s.running += 1;
            let g = SlotGuard {
                adm: self.clone(),
                armed: true,
            };
            tm::queue_waiting(s.queue.len(), s.running);
            if let Err(mut g) = tx.send(g) {
                g.armed = false;
                s.running -= 1;
            }
            return Ok(rx);
        }
        s.queue
            .push(
                tenant.to_string(),
                share,
                cost,
                Waiter { tx },
                Some(deadline),
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
        let mut s = self.sched.lock().unwrap_or_else(|e| e.into_inner());
        self.pump_locked(&mut s);
    }

    fn pump_locked(self: &Arc<Self>, s: &mut Sched) {
        let now = Instant::now();
        // Dropping an expired waiter's sender tells it at once.
        drop(s.queue.remove_expired(now));
        let cap = self.capacity();
        while s.running < cap {
            let Some((_, w)) = s.queue.pop(now) else {
                break;
            };
            s.running += 1;
            let g = SlotGuard {
                adm: self.clone(),
                armed: true,
            };
            if let Err(mut g) = w.tx.send(g) {
                // The waiter left (client gone or timed out).
                g.armed = false;
                s.running -= 1;
            }
        }
        tm::queue_waiting(s.queue.len(), s.running);
    }
}
