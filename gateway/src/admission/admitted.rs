//! One admitted request's hold on the gateway, and the per-worker
//! in-flight counts it keeps.
//!
//! [`super::Admission::admit`] returns an [`Admitted`]; placement adds the
//! request's [`Reservation`] to it ([`super::Admission::place`]) and
//! dispatch the worker it is sent to ([`Admitted::attempt`]). Everything
//! it took is given back when it is dropped (the response's last byte, an
//! error, or the client leaving), in one order: the worker's in-flight
//! count and reservation, then the dispatch slot (which serves the next
//! waiter, who then sees the worker free), then the tenant's concurrency
//! permit. No layer of the stack holds a release of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::placement::Reservation;
use super::queue::SlotGuard;
use super::tenants::TenantPermit;
use crate::telemetry as tm;
use crate::worker::{WorkerPool, WorkerSlot};

/// Requests being sent to each worker now (a retry moves its count to the
/// next worker): what `/health` shows and the `cake_worker_in_flight`
/// gauge.
pub struct InFlight {
    pool: Arc<WorkerPool>,
    counts: Vec<AtomicU64>,
}

impl InFlight {
    pub fn new(pool: Arc<WorkerPool>) -> InFlight {
        let counts = pool.slots().iter().map(|_| AtomicU64::new(0)).collect();
        InFlight { pool, counts }
    }

    /// Requests on worker `i` now (0 for an unknown worker).
    pub fn get(&self, i: usize) -> u64 {
        self.counts.get(i).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// One more (`up`) or one fewer request on worker `i`.
    fn step(&self, i: usize, up: bool) {
        let Some(c) = self.counts.get(i) else { return };
        let n = if up {
            c.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            c.fetch_sub(1, Ordering::SeqCst) - 1
        };
        if let Some(s) = self.pool.slots().get(i) {
            tm::worker_in_flight(s.name(), n);
        }
    }

    fn index_of(&self, slot: &Arc<WorkerSlot>) -> Option<usize> {
        self.pool.slots().iter().position(|s| Arc::ptr_eq(s, slot))
    }
}

/// The worker a request is being sent to: counted in flight there until
/// dropped.
struct Attempt {
    in_flight: Arc<InFlight>,
    worker: usize,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.in_flight.step(self.worker, false);
    }
}

/// See the module docs. Fields drop in the order they are declared; the
/// slot and the permit are held for their release alone.
pub struct Admitted {
    attempt: Option<Attempt>,
    reservation: Option<Reservation>,
    _slot: SlotGuard,
    _permit: Option<TenantPermit>,
    in_flight: Arc<InFlight>,
}

impl Admitted {
    pub(super) fn new(
        permit: Option<TenantPermit>,
        slot: SlotGuard,
        in_flight: Arc<InFlight>,
    ) -> Admitted {
        Admitted {
            attempt: None,
            reservation: None,
            _slot: slot,
            _permit: permit,
            in_flight,
        }
    }

    pub(super) fn set_reservation(&mut self, r: Reservation) {
        self.reservation = Some(r);
    }

    /// The request is being sent to `slot` (one of the pool's): it counts
    /// in flight there, and no longer on the worker tried before.
    pub fn attempt(&mut self, slot: &Arc<WorkerSlot>) {
        self.attempt = None;
        if let Some(worker) = self.in_flight.index_of(slot) {
            self.in_flight.step(worker, true);
            self.attempt = Some(Attempt {
                in_flight: self.in_flight.clone(),
                worker,
            });
        }
    }

    /// The worker is done with it (its last event came): it no longer
    /// counts in flight there, while the rest is held until the response
    /// ends.
    pub fn worker_done(&mut self) {
        self.attempt = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::admission::{Admission, AdmitRequest, PlaceRequest};
    use crate::config::PolicyConfig;
    use crate::worker::mock_pool;

    fn admission(policy: &PolicyConfig) -> Arc<Admission> {
        let (_mocks, pool) = mock_pool(2, 3);
        Arc::new(Admission::new(policy, &[], pool))
    }

    fn request(prompt: &[u32]) -> AdmitRequest<'_> {
        AdmitRequest {
            tenant: "default",
            entry: None,
            place: PlaceRequest {
                prompt,
                cached_tokens: 0,
                cache_group: "g",
                chunks: None,
            },
        }
    }

    /// One value holds a request's slot, reservation and in-flight count;
    /// a retry moves the count; dropping it gives everything back and
    /// serves the request waiting for the slot.
    #[tokio::test]
    async fn one_hold_gives_every_part_back() {
        let policy = PolicyConfig {
            max_concurrent: 1,
            ..PolicyConfig::default()
        };
        let adm = admission(&policy);
        let prompt = [1u32, 2, 3];
        let mut a = adm.admit(&request(&prompt)).await.unwrap();
        let order = adm.place(&mut a, &request(&prompt).place).unwrap();
        assert_eq!(order.len(), 2);
        a.attempt(&order[0]);
        let first = usize::from(order[0].name() == "w1");
        assert_eq!(adm.in_flight(first), 1);
        // The first worker failed: the request goes to the other one.
        a.attempt(&order[1]);
        assert_eq!((adm.in_flight(first), adm.in_flight(1 - first)), (0, 1));

        // The only slot is taken: a second request waits for it.
        let adm2 = adm.clone();
        let waiting = tokio::spawn(async move {
            let prompt = [4u32, 5];
            adm2.admit(&request(&prompt)).await.map(|_| ())
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        assert_eq!(adm.in_flight(1 - first), 0);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// A worker that is done no longer counts in flight, while the slot is
    /// still held until the response ends.
    #[tokio::test]
    async fn a_finished_worker_stops_counting_before_the_response_ends() {
        let adm = admission(&PolicyConfig::default());
        let prompt = [1u32];
        let mut a = adm.admit(&request(&prompt)).await.unwrap();
        let order = adm.place(&mut a, &request(&prompt).place).unwrap();
        a.attempt(&order[0]);
        a.worker_done();
        assert_eq!(adm.in_flight(0) + adm.in_flight(1), 0);
    }
}
