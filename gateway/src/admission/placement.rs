//! Placement: the [`cake_policy::Placer`] (round-robin cursor, affinity
//! table), the in-flight [`cake_policy::Ledger`] of work sent and not yet
//! in a load report, what each worker holds in its own tiers, and each
//! worker's reserved dispatch slots. [`Placement`] owns all of it; a
//! [`Reservation`] points back at it alone.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use cake_engine::worker::LoadReport;
use cake_policy::{
    Ledger, Placement as Placed, PlacementPolicy, Placer, Prediction, PrefixKey, RateDefaults,
    RequestShape, WorkerLoad, WorkerView, predict, prefill_rate,
};

use super::holdings::Holdings;
use super::prefixes::{ChunkId, InFlightPrefix, InFlightPrefixes, PrefixChunks, PrefixGuard};
use super::sha256;
use crate::config::PolicyConfig;
use crate::worker::{WorkerPool, WorkerSlot};

/// Prefixes the `cache-affinity` policy remembers.
const AFFINITY_CAPACITY: usize = 16_384;
/// A ledger entry whose completion got lost stops counting after this.
const LEDGER_MAX_AGE: Duration = Duration::from_secs(120);

struct PlaceState {
    placer: Placer,
    ledger: Ledger,
    /// The chunks each worker holds in its own tiers, as placed there.
    holdings: Holdings,
    /// Requests placed on each worker and not finished.
    reserved: Vec<u32>,
    /// The "as of" instant of each worker's last report seen.
    seen: Vec<Option<Instant>>,
    next_id: u64,
    /// `policy.max_in_flight_per_worker` (0: no cap).
    per_worker: u32,
    /// `policy.shared_store_bandwidth_bytes_per_s` (0: the reports').
    shared_bw: f64,
}

/// See the module docs.
pub struct Placement {
    state: Mutex<PlaceState>,
    pool: Arc<WorkerPool>,
    prefixes: Arc<InFlightPrefixes>,
}

impl Placement {
    pub fn new(
        policy: &PolicyConfig,
        pool: Arc<WorkerPool>,
        prefixes: Arc<InFlightPrefixes>,
    ) -> Placement {
        let workers = pool.slots().len();
        let placement = Placement {
            state: Mutex::new(PlaceState {
                placer: Placer::new(policy.placement, AFFINITY_CAPACITY),
                ledger: Ledger::new(LEDGER_MAX_AGE),
                holdings: Holdings::new(workers, policy.local_chunks_per_worker),
                reserved: vec![0; workers],
                seen: vec![None; workers],
                next_id: 0,
                // The reloadable settings: `set_policy` below.
                per_worker: 0,
                shared_bw: 0.0,
            }),
            pool,
            prefixes,
        };
        placement.set_policy(policy);
        placement
    }

    /// A reloaded policy: a new placer when the policy changed (its
    /// cursor and affinity table start over), the new weight and caps.
    pub fn set_policy(&self, policy: &PolicyConfig) {
        let mut p = self.state.lock();
        if policy.placement != p.placer.policy() {
            p.placer = Placer::new(policy.placement, AFFINITY_CAPACITY);
        }
        p.placer.set_work_weight(policy.work_weight);
        p.per_worker = policy.max_in_flight_per_worker;
        p.shared_bw = policy.shared_store_bandwidth_bytes_per_s;
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
    placement: Arc<Placement>,
    worker: usize,
    id: u64,
    _prefix: Option<PrefixGuard>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut p = self.placement.state.lock();
        if let Some(r) = p.reserved.get_mut(self.worker) {
            *r = r.saturating_sub(1);
        }
        p.ledger.complete(self.id);
    }
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

    /// The chunk size the presence lookup said (0: unknown).
    fn chunk_tokens(&self) -> u64 {
        self.chunks.map_or(0, |c| c.chunk_tokens as u64)
    }

    /// The prompt's chunks that may be read rather than computed (never
    /// the one holding the last token).
    fn ids(&self) -> &[ChunkId] {
        self.chunks
            .map_or(&[][..], |c| &c.ids[..c.cap.min(c.ids.len())])
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

/// A request on the worker computing its prefix for a sibling in flight:
/// it waits for that worker's compute backlog (the sibling's prefill is in
/// it), takes the sibling's chunks with no link crossed, loads the stored
/// ones and computes its own suffix. The prefix's stored chunks are work
/// the sibling has done: the backlog counts them until the worker next
/// reports (the ledger holds the sibling's whole prefill), so they are
/// taken off it.
fn on_sibling(
    load: &WorkerLoad,
    shape: &RequestShape,
    sib: &InFlightPrefix,
    stored_tokens: usize,
) -> Prediction {
    let there = RequestShape {
        cached_tokens: sib.cached_tokens as u64,
        ..*shape
    };
    let no_link = WorkerLoad {
        bandwidth: f64::MAX,
        queued_compute_tokens: load
            .queued_compute_tokens
            .saturating_sub(stored_tokens as u64),
        ..*load
    };
    let mut p = predict(&no_link, &there, &RateDefaults::default());
    // Only the stored chunks among them go through the I/O queue (the
    // ledger's figure); the sibling's come for free.
    let from_sibling = sib.cached_tokens.saturating_sub(stored_tokens) as u64;
    let per_token = p.io_bytes / there.cached_tokens.max(1);
    p.io_bytes = p
        .io_bytes
        .saturating_sub(from_sibling.saturating_mul(per_token));
    p
}

impl Placement {
    /// The workers' views: reports plus the ledger; `with_room` leaves out
    /// workers at `policy.max_in_flight_per_worker`. A worker that has not
    /// reported yet is taken to use `chunk` tokens a chunk (the size the
    /// presence lookup said; 0: unknown), so that its cached chunks count
    /// before its first report. `ids`: the prompt's chunks, for what each
    /// worker holds of them in its own tiers.
    fn views(
        &self,
        p: &mut PlaceState,
        now: Instant,
        with_room: bool,
        chunk: u64,
        ids: &[ChunkId],
    ) -> Vec<WorkerView> {
        let cap = p.per_worker;
        let shared_bw = p.shared_bw;
        let slots = self.pool.slots();
        for (i, s) in slots.iter().enumerate() {
            let as_of = s.load_as_of();
            if as_of.is_some() && p.seen[i] != as_of {
                p.seen[i] = as_of;
                if let Some(t) = as_of {
                    p.ledger.on_report(i, t.into_std());
                }
            }
        }
        p.ledger.prune(now.into_std());
        slots
            .iter()
            .enumerate()
            .map(|(i, s)| WorkerView {
                index: i,
                healthy: s.is_up() && (!with_room || cap == 0 || p.reserved[i] < cap),
                load: {
                    let mut load = p.ledger.effective_load(i, &worker_load(&s.last_load()));
                    if load.chunk_tokens == 0 {
                        load.chunk_tokens = chunk;
                    }
                    if shared_bw > 0.0 {
                        load.bandwidth = shared_bw;
                    }
                    load
                },
                cached_tokens: None,
                local_tokens: (p.holdings.leading(i, ids) as u64).saturating_mul(chunk),
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
        let mut p = self.state.lock();
        // Under the placement lock: a burst's requests are placed one
        // after the other, each seeing where the ones before it went.
        let in_flight = req.chunks.and_then(|c| self.prefixes.best(c));
        let ids = req.ids();
        let mut views = self.views(&mut p, now, true, req.chunk_tokens(), ids);
        if !views.iter().any(|v| v.healthy) {
            // Every worker is at its cap (one went down since the slot was
            // granted): place among the healthy ones regardless.
            views = self.views(&mut p, now, false, req.chunk_tokens(), ids);
        }
        let shape = req.shape();
        let sibling = in_flight.as_ref().map(|s| s.worker);
        let Placed {
            mut worker,
            mut prediction,
        } = p.placer.place(&views, &shape, Some(&prefix))?;
        if p.placer.policy() == PlacementPolicy::Adaptive
            && let Some(sib) = in_flight
            && views.get(sib.worker).is_some_and(|v| v.healthy)
        {
            let on_sibling = on_sibling(&views[sib.worker].load, &shape, &sib, req.cached_tokens);
            if sib.worker == worker {
                // The placer chose the sibling's worker anyway: what the
                // request costs there is the suffix, not the prefix.
                prediction = on_sibling;
            } else {
                // Elsewhere the request recomputes the prefix, which costs
                // that worker about the request's idle TTFT; go elsewhere
                // only when the sibling's worker is slower by more than
                // that (saturated). A worker that has computed nothing yet
                // is taken to be as fast as the sibling's, not as fast as
                // the built-in defaults say: the fleet's workers are alike
                // until measured otherwise.
                let elsewhere = if views[worker].load.compute_a > 0.0 {
                    prediction
                } else {
                    let alike = WorkerLoad {
                        compute_a: views[sib.worker].load.compute_a,
                        compute_b: views[sib.worker].load.compute_b,
                        ..views[worker].load
                    };
                    predict(&alike, &shape, &RateDefaults::default())
                };
                if on_sibling.ttft <= elsewhere.ttft + elsewhere.idle_ttft {
                    worker = sib.worker;
                    prediction = on_sibling;
                }
            }
        }
        tracing::debug!(
            policy = %p.placer.policy(),
            worker,
            prompt_tokens = req.prompt.len(),
            cached_tokens = req.cached_tokens,
            local_tokens = ?views.iter().map(|v| v.local_tokens).collect::<Vec<_>>(),
            sibling = ?sibling,
            ttft_ms = prediction.ttft.as_secs_f64() * 1e3,
            compute_tokens = prediction.compute_tokens,
            "placed"
        );
        p.next_id += 1;
        let id = p.next_id;
        p.ledger
            .dispatch(id, worker, prediction.work(), now.into_std());
        p.reserved[worker] += 1;
        // The worker keeps the prompt's chunks in its own tiers as it
        // computes or loads them.
        p.holdings.record(worker, ids);
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
            placement: self.clone(),
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
        let mut p = self.state.lock();
        let views = self.views(&mut p, now, false, req.chunk_tokens(), req.ids());
        drop(p);
        let rate = prefill_rate(
            views.iter().filter(|v| v.healthy).map(|v| &v.load),
            &RateDefaults::default(),
        );
        let placed = Placer::new(PlacementPolicy::Adaptive, 1).place(&views, &req.shape(), None)?;
        Some((placed.prediction, rate))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::admission::chunk_ids;
    use crate::worker::{MockWorker, mock_pool};

    const CHUNK: usize = 16;
    const PREFIX: usize = 6 * CHUNK;

    fn report(queued: u64, measured: bool) -> LoadReport {
        LoadReport {
            queued_compute_tokens: queued,
            compute_a_s: if measured { 0.01 } else { 0.0 },
            compute_b_s: if measured { 0.0001 } else { 0.0 },
            bandwidth_bytes_per_s: 1e9,
            kv_bytes_per_token: 1000,
            chunk_tokens: CHUNK as u64,
            ..LoadReport::default()
        }
    }

    /// Two mock workers reporting `loads` (`None`: no report yet), and the
    /// placement over them.
    async fn fleet(loads: Option<[LoadReport; 2]>) -> (Arc<Placement>, Vec<MockWorker>) {
        let (mocks, pool) = mock_pool(2, 3);
        if let Some(loads) = loads {
            for (m, l) in mocks.iter().zip(loads) {
                m.set_load(Some(l));
            }
            pool.check_all().await;
        }
        let placement = Placement::new(&PolicyConfig::default(), pool, Arc::default());
        (Arc::new(placement), mocks)
    }

    fn burst_prompt(i: u32) -> Vec<u32> {
        let mut p: Vec<u32> = (0..PREFIX as u32).map(|t| (t * 7 + 3) % 200).collect();
        p.extend((0..5).map(|j| 200 + 5 * i + j));
        p
    }

    fn chunks(prompt: &[u32]) -> PrefixChunks {
        let ids = chunk_ids("g", prompt, CHUNK);
        PrefixChunks {
            stored: vec![false; ids.len()],
            cap: (prompt.len() - 1) / CHUNK,
            ids,
            chunk_tokens: CHUNK,
        }
    }

    fn place(adm: &Arc<Placement>, prompt: &[u32]) -> (usize, Reservation) {
        let c = chunks(prompt);
        let req = PlaceRequest {
            prompt,
            cached_tokens: 0,
            cache_group: "g",
            chunks: Some(&c),
        };
        let (order, r, _) = adm.place(&req).unwrap();
        let name = order[0].name().to_string();
        (usize::from(name == "w1"), r)
    }

    /// A burst over one new prefix goes where the first of it went, also
    /// after that worker reports the prefix in its queue (once, as the
    /// engine counts it: its waiters do not count the shared chunks), and
    /// whether or not the other worker has measured its rates, and before
    /// any worker has reported at all.
    #[tokio::test]
    async fn a_burst_follows_the_worker_computing_its_prefix() {
        for (case, loads) in [
            ("both measured", Some([report(0, true), report(0, true)])),
            ("one measured", Some([report(0, true), report(0, false)])),
            ("no report yet", None),
        ] {
            let (adm, mocks) = fleet(loads).await;
            let (first, r0) = place(&adm, &burst_prompt(0));
            let mut held = vec![r0];
            for i in 1..8 {
                if i == 3 {
                    // The sibling's worker reports: the prefix and the
                    // suffixes queued so far.
                    mocks[first].set_load(Some(report((PREFIX + 5 * 3) as u64, true)));
                    adm.pool.check_all().await;
                }
                let (w, r) = place(&adm, &burst_prompt(i));
                assert_eq!(w, first, "request {i} ({case})");
                held.push(r);
            }
        }
    }

    /// A prompt placed once is held by that worker: under `adaptive` the
    /// same prefix goes back there after the first request ended (its
    /// chunks are in that worker's own tiers, not only in the shared
    /// store), while `round-robin` moves on.
    #[tokio::test]
    async fn a_prefix_goes_back_to_the_worker_holding_it() {
        let (adm, _mocks) = fleet(Some([report(0, true), report(0, true)])).await;
        let (first, r0) = place(&adm, &burst_prompt(0));
        drop(r0);
        for i in 1..4 {
            let (w, r) = place(&adm, &burst_prompt(i));
            assert_eq!(w, first, "request {i}");
            drop(r);
        }
        let (adm, _mocks) = fleet(Some([report(0, true), report(0, true)])).await;
        adm.set_policy(&PolicyConfig {
            placement: PlacementPolicy::RoundRobin,
            ..PolicyConfig::default()
        });
        let (a, r0) = place(&adm, &burst_prompt(0));
        drop(r0);
        let (b, _r1) = place(&adm, &burst_prompt(1));
        assert_ne!(a, b);
    }

    /// A sibling's worker far behind (its queue many prefills deep) loses
    /// the request to an idle one, which computes the prefix again.
    #[tokio::test]
    async fn a_saturated_sibling_worker_is_passed_over() {
        let (adm, mocks) = fleet(Some([report(0, true), report(0, true)])).await;
        let (first, _r0) = place(&adm, &burst_prompt(0));
        mocks[first].set_load(Some(report(40 * PREFIX as u64, true)));
        adm.pool.check_all().await;
        let (w, _r1) = place(&adm, &burst_prompt(1));
        assert_ne!(w, first);
    }
}
