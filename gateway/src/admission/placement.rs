//! Placement state: the [`cake_policy::Placer`] (round-robin cursor,
//! affinity table), the in-flight [`cake_policy::Ledger`] of work sent and
//! not yet in a load report, and each worker's reserved dispatch slots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cake_engine::worker::LoadReport;
use cake_policy::{
    Ledger, Placement, PlacementPolicy, Placer, Prediction, PrefixKey, RateDefaults, RequestShape,
    WorkerLoad, WorkerView, predict, prefill_rate,
};

use super::prefixes::{PrefixChunks, PrefixGuard};
use super::{Admission, sha256};
use crate::worker::WorkerSlot;

/// Prefixes the `cache-affinity` policy remembers.
const AFFINITY_CAPACITY: usize = 16_384;
/// A ledger entry whose completion got lost stops counting after this.
const LEDGER_MAX_AGE: Duration = Duration::from_secs(120);

pub(super) struct PlaceState {
    placer: Placer,
    ledger: Ledger,
    /// Requests placed on each worker and not finished.
    reserved: Vec<u32>,
    /// The "as of" instant of each worker's last report seen.
    seen: Vec<Option<Instant>>,
    next_id: u64,
}

impl PlaceState {
    pub(super) fn new(policy: PlacementPolicy, workers: usize) -> PlaceState {
        PlaceState {
            placer: Placer::new(policy, AFFINITY_CAPACITY),
            ledger: Ledger::new(LEDGER_MAX_AGE),
            reserved: vec![0; workers],
            seen: vec![None; workers],
            next_id: 0,
        }
    }

    pub(super) fn set_policy(&mut self, policy: PlacementPolicy) {
        self.placer = Placer::new(policy, AFFINITY_CAPACITY);
    }
}

/// A worker's report as the cost model reads it.
fn worker_load(r: &LoadReport) -> WorkerLoad {
    WorkerLoad {
        queued_compute_tokens: r.queued_compute_tokens,
        queued_io_bytes: r.queued_io_bytes,
        compute_a: r.compute_a_s,
        compute_b: r.compute_b_s,
        bandwidth: r.bandwidth_bytes_per_s,
        chunk_tokens: r.chunk_tokens,
        kv_bytes_per_token: r.kv_bytes_per_token,
    }
}

/// A request placed on a worker: its slot there, its ledger entry and its
/// chunks in the in-flight prefix registry, given back when dropped.
pub struct Reservation {
    adm: Arc<Admission>,
    worker: usize,
    id: u64,
    _prefix: Option<PrefixGuard>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut p = self.adm.place.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = p.reserved.get_mut(self.worker) {
            *r = r.saturating_sub(1);
        }
        p.ledger.complete(self.id);
    }
}

/// A worker computing part of a request's prefix for another request in
/// flight (the gateway's in-flight prefix registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightPrefix {
    /// The worker's index in the pool.
    pub worker: usize,
    /// Prompt tokens stored or being computed there.
    pub cached_tokens: usize,
}

/// What placement needs of a request.
pub struct PlaceRequest<'a> {
    pub prompt: &'a [u32],
    /// Prompt tokens stored where every worker reads them.
    pub cached_tokens: usize,
    pub cache_group: &'a str,
    /// The prompt's chunks, for the in-flight prefix registry (`None`:
    /// the registry is neither consulted nor told).
    pub chunks: Option<&'a PrefixChunks>,
}

impl PlaceRequest<'_> {
    fn shape(&self) -> RequestShape {
        RequestShape {
            prompt_tokens: self.prompt.len() as u64,
            cached_tokens: self.cached_tokens as u64,
            kv_bytes_per_token: 0,
        }
    }

    /// The prefix's identity for `cache-affinity`: its cache group and
    /// first chunk.
    fn prefix(&self, chunk: usize) -> PrefixKey {
        let mut bytes = self.cache_group.as_bytes().to_vec();
        bytes.push(0);
        for t in self.prompt.iter().take(chunk.max(1)) {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        sha256::digest(&bytes)
    }
}

impl Admission {
    /// The workers' views: reports plus the ledger; `with_room` leaves out
    /// workers at `policy.max_in_flight_per_worker`.
    fn views(&self, p: &mut PlaceState, now: Instant, with_room: bool) -> Vec<WorkerView> {
        let cap = self.live.load().policy.max_in_flight_per_worker;
        let slots = self.pool.slots();
        for (i, s) in slots.iter().enumerate() {
            let as_of = s.load_as_of();
            if as_of.is_some() && p.seen[i] != as_of {
                p.seen[i] = as_of;
                if let Some(t) = as_of {
                    p.ledger.on_report(i, t);
                }
            }
        }
        p.ledger.prune(now);
        slots
            .iter()
            .enumerate()
            .map(|(i, s)| WorkerView {
                index: i,
                healthy: s.is_up() && (!with_room || cap == 0 || p.reserved[i] < cap),
                load: p.ledger.effective_load(i, &worker_load(&s.last_load())),
                cached_tokens: None,
            })
            .collect()
    }

    /// Places a request: the workers to try (the chosen one first, then the
    /// other healthy ones) and its reservation; `None` when none is up.
    pub fn place(
        self: &Arc<Self>,
        req: &PlaceRequest<'_>,
    ) -> Option<(Vec<Arc<WorkerSlot>>, Reservation, Prediction)> {
        let now = Instant::now();
        let slots = self.pool.slots();
        let chunk = slots
            .first()
            .map_or(0, |s| s.last_load().chunk_tokens as usize);
        let prefix = req.prefix(if chunk == 0 { 256 } else { chunk });
        let mut p = self.place.lock().unwrap_or_else(|e| e.into_inner());
        // Under the placement lock: a burst's requests are placed one
        // after the other, each seeing where the ones before it went.
        let in_flight = req.chunks.and_then(|c| self.prefixes.best(c));
        let mut views = self.views(&mut p, now, true);
        if !views.iter().any(|v| v.healthy) {
            // Every worker is at its cap (one went down since the slot was
            // granted): place among the healthy ones regardless.
            views = self.views(&mut p, now, false);
        }
        let shape = req.shape();
        let Placement {
            mut worker,
            mut prediction,
        } = p.placer.place(&views, &shape, Some(&prefix))?;
        if p.placer.policy() == PlacementPolicy::Adaptive
            && let Some(sib) = in_flight
            && sib.worker != worker
            && views.get(sib.worker).is_some_and(|v| v.healthy)
        {
            // The worker computing this prefix now: there the request
            // waits for those chunks instead of computing them again.
            // Elsewhere it recomputes the prefix, which costs that worker
            // about the request's idle TTFT; go elsewhere only when the
            // sibling's worker is slower by more than that (saturated).
            let there = RequestShape {
                cached_tokens: sib.cached_tokens as u64,
                ..shape
            };
            // The sibling's chunks cross no link: there the request waits
            // for the worker's compute backlog (the sibling's prefill is
            // in it), then computes its own suffix.
            let no_link = WorkerLoad {
                bandwidth: f64::MAX,
                ..views[sib.worker].load
            };
            let on_sibling = predict(&no_link, &there, &RateDefaults::default());
            // A worker that has computed nothing yet is taken to be as fast
            // as the sibling's, not as fast as the built-in defaults say:
            // the fleet's workers are alike until measured otherwise.
            let elsewhere = if views[worker].load.compute_a > 0.0 {
                prediction
            } else {
                let alike = WorkerLoad {
                    compute_a: no_link.compute_a,
                    compute_b: no_link.compute_b,
                    ..views[worker].load
                };
                predict(&alike, &shape, &RateDefaults::default())
            };
            if on_sibling.ttft <= elsewhere.ttft + elsewhere.idle_ttft {
                worker = sib.worker;
                prediction = on_sibling;
            }
        }
        p.next_id += 1;
        let id = p.next_id;
        p.ledger.dispatch(id, worker, prediction.work(), now);
        p.reserved[worker] += 1;
        let prefix = req
            .chunks
            .map(|c| self.prefixes.register(c.ids.clone(), worker));
        drop(p);
        let mut order = vec![slots[worker].clone()];
        order.extend(
            slots
                .iter()
                .enumerate()
                .filter(|(i, s)| *i != worker && s.is_up())
                .map(|(_, s)| s.clone()),
        );
        let r = Reservation {
            adm: self.clone(),
            worker,
            id,
            _prefix: prefix,
        };
        Some((order, r, prediction))
    }

    /// The request's prediction on the worker the cost model would pick
    /// (for shedding), and the fleet's prefill rate in tokens per second.
    pub fn estimate(&self, req: &PlaceRequest<'_>) -> Option<(Prediction, f64)> {
        let now = Instant::now();
        let mut p = self.place.lock().unwrap_or_else(|e| e.into_inner());
        let views = self.views(&mut p, now, false);
        drop(p);
        let rate = prefill_rate(
            views.iter().filter(|v| v.healthy).map(|v| &v.load),
            &RateDefaults::default(),
        );
        let placed = Placer::new(PlacementPolicy::Adaptive, 1).place(&views, &req.shape(), None)?;
        Some((placed.prediction, rate))
    }
}
