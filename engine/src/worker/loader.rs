//! The bidirectional loader's shared state for one request: a slot per
//! chunk of the cached range, claimed by exactly one side (compute from the
//! front, I/O from the back) before that side works on it. A third source,
//! a sibling request computing the same chunk now ([`super::siblings`]),
//! hands its chunks over into the slots it owes; neither side claims those
//! while the sibling runs.

use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::future::{AbortHandle, Abortable};
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;

use super::stats::IoMeter;
use crate::EngineError;
use crate::cache::DeviceChunk;
use crate::kv::{ChunkContext, ChunkKey, KvStore, load_chunk_to};

/// Where a chunk of the cached range comes from, as planning found it.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Stored: the I/O side may load it.
    Stored,
    /// Nowhere: only compute can fill it.
    Hole,
    /// Being computed by another request on this worker (`running`: the
    /// scheduler runs it now).
    Sibling(Arc<AtomicBool>),
}

impl Source {
    /// Whether the chunk may come from somewhere other than compute.
    pub(crate) fn comes_from_elsewhere(&self) -> bool {
        matches!(self, Source::Stored | Source::Sibling(_))
    }
}

/// One chunk of the cached range: the claim protocol's state, private to
/// this module (the compute side and the I/O side go through
/// [`LoadPlan`]'s methods).
#[derive(Debug)]
pub(crate) enum Slot {
    /// Stored and not claimed yet.
    Stored,
    /// Not stored (a hole): only compute can fill it.
    Hole,
    /// Claimed by compute.
    Computing,
    /// Claimed by I/O, load in flight since then. Compute may still take
    /// it over (the load is then dropped) when it predicts computing the
    /// chunk is quicker than waiting.
    Loading(std::time::Instant),
    /// Loaded (on the model's device), waiting for compute to reach it.
    Loaded(DeviceChunk),
    /// Being computed by another request on this worker (`running`: the
    /// scheduler runs it now; if not, compute claims the chunk itself).
    /// The I/O side skips it.
    Sibling(Arc<AtomicBool>),
    /// Handed over by that request: taken in like a loaded chunk.
    Shared(DeviceChunk),
    /// Taken into the request's KV cache.
    Used,
    /// The load failed (missing, corrupt, store down): compute takes it.
    Failed,
}

/// What the compute side does at the front of the cached range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Front {
    /// Compute it now (claimed).
    Compute,
    /// Wait for a load to land.
    Wait,
    /// Wait for a sibling request to hand it over.
    WaitSibling,
    /// It does not fit in this step; left unclaimed.
    NoRoom,
}

/// Which chunks the I/O side loads, and in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoOrder {
    /// From the back, stopping where compute has claimed (Cake).
    BackToFront,
    /// Every stored chunk from the front (load-only: compute never claims
    /// a stored chunk, so all are loaded).
    FrontToBack,
}

/// The shared plan of one request's cached range.
#[derive(Debug)]
pub(crate) struct LoadPlan {
    slots: Mutex<Vec<Slot>>,
    cancelled: AtomicBool,
    /// Wakes the I/O side when the request is cancelled or compute takes
    /// over a chunk being loaded, so it drops loads no longer needed.
    changed: Notify,
}

impl LoadPlan {
    #[cfg(test)]
    pub(crate) fn new(stored: &[bool]) -> Arc<LoadPlan> {
        LoadPlan::from_sources(
            stored
                .iter()
                .map(|&s| if s { Source::Stored } else { Source::Hole })
                .collect(),
        )
    }

    /// A plan whose chunks start as planning found them.
    pub(crate) fn from_sources(sources: Vec<Source>) -> Arc<LoadPlan> {
        let slots = sources
            .into_iter()
            .map(|s| match s {
                Source::Stored => Slot::Stored,
                Source::Hole => Slot::Hole,
                Source::Sibling(running) => Slot::Sibling(running),
            })
            .collect();
        Arc::new(LoadPlan {
            slots: Mutex::new(slots),
            cancelled: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    /// The chunk that landed at `i` (loaded, or handed over by a
    /// sibling: `shared`), taken for the cache; `None` when none has.
    pub(crate) fn take_landed(&self, i: usize) -> Option<(DeviceChunk, bool)> {
        let mut s = self.lock();
        let slot = s.get_mut(i)?;
        if !matches!(slot, Slot::Loaded(_) | Slot::Shared(_)) {
            return None;
        }
        match std::mem::replace(slot, Slot::Used) {
            Slot::Loaded(c) => Some((c, false)),
            Slot::Shared(c) => Some((c, true)),
            _ => None,
        }
    }

    /// The compute side at chunk `i`, the front of the cached range: claims
    /// it when compute should work on it now. `fits`: a chunk fits in what
    /// is left of this step (a claim left waiting for a step with room
    /// would keep the I/O side off the chunk while the link sits idle).
    /// `load_only`: stored chunks are the I/O side's. `steal(issued)`:
    /// whether to take over a load in flight since `issued` rather than
    /// wait for it (the load is then dropped).
    pub(crate) fn claim_front(
        &self,
        i: usize,
        fits: bool,
        load_only: bool,
        steal: impl FnOnce(std::time::Instant) -> bool,
    ) -> Result<Front, EngineError> {
        let mut s = self.lock();
        let Some(slot) = s.get_mut(i) else {
            return Err(EngineError::Internal(format!(
                "loader invariant broken: chunk {i} is outside the plan"
            )));
        };
        let front = match slot {
            // Landed after the caller looked: the next pass takes it in.
            Slot::Loaded(_) | Slot::Shared(_) => Front::Wait,
            Slot::Stored if load_only => Front::Wait,
            Slot::Loading(_) if load_only || !fits => Front::Wait,
            Slot::Loading(issued) => {
                if steal(*issued) {
                    *slot = Slot::Computing;
                    drop(s);
                    self.taken_over();
                    return Ok(Front::Compute);
                }
                Front::Wait
            }
            // A running sibling hands it over soon.
            Slot::Sibling(running) if running.load(Ordering::Acquire) => Front::WaitSibling,
            Slot::Stored | Slot::Hole | Slot::Failed | Slot::Sibling(_) if !fits => Front::NoRoom,
            Slot::Stored | Slot::Hole | Slot::Failed | Slot::Sibling(_) => {
                *slot = Slot::Computing;
                Front::Compute
            }
            // Claimed by compute earlier and not run yet.
            Slot::Computing => Front::Compute,
            Slot::Used => {
                return Err(EngineError::Internal(format!(
                    "loader invariant broken: chunk {i} already taken"
                )));
            }
        };
        Ok(front)
    }

    /// Chunks from `from` on that will reach the cache without this
    /// request computing them: loaded already, or handed over (or about to
    /// be) by a running sibling.
    pub(crate) fn arriving_from(&self, from: usize) -> usize {
        let s = self.lock();
        s.iter()
            .skip(from)
            .filter(|slot| match slot {
                Slot::Loaded(_) | Slot::Shared(_) => true,
                Slot::Sibling(running) => running.load(Ordering::Acquire),
                _ => false,
            })
            .count()
    }

    /// Compute has put chunk `i` into the cache.
    pub(crate) fn computed(&self, i: usize) {
        if let Some(slot) = self.lock().get_mut(i) {
            *slot = Slot::Used;
        }
    }

    /// Whether chunk `i` still waits for a sibling to hand it over.
    pub(crate) fn waits_for_sibling(&self, i: usize) -> bool {
        !self.cancelled() && matches!(self.lock().get(i), Some(Slot::Sibling(_)))
    }

    /// A sibling hands chunk `i` over; taken unless compute claimed the
    /// chunk meanwhile (or the request ended). Returns whether it was.
    pub(crate) fn offer_shared(&self, i: usize, chunk: DeviceChunk) -> bool {
        if self.cancelled() {
            return false;
        }
        let mut s = self.lock();
        match s.get_mut(i) {
            Some(slot @ Slot::Sibling(_)) => {
                *slot = Slot::Shared(chunk);
                true
            }
            _ => false,
        }
    }

    /// The sibling computing chunk `i` ended without it: compute fills it.
    pub(crate) fn sibling_gone(&self, i: usize) {
        let mut s = self.lock();
        if let Some(slot @ Slot::Sibling(_)) = s.get_mut(i) {
            *slot = Slot::Hole;
        }
    }

    /// The slots themselves, for tests that set up or check a state.
    #[cfg(test)]
    pub(crate) fn slots_for_test(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.lock()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock()
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Compute took over a chunk whose load is in flight: that load is
    /// dropped now rather than left to use the link until it lands.
    pub(crate) fn taken_over(&self) {
        self.changed.notify_one();
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// I/O claims chunk `i` when it is stored and unclaimed.
    fn claim_for_io(&self, i: usize) -> bool {
        let mut s = self.lock();
        if matches!(s[i], Slot::Stored) {
            s[i] = Slot::Loading(std::time::Instant::now());
            true
        } else {
            false
        }
    }

    /// Records a finished load, unless compute took the chunk over
    /// meanwhile (then the loaded data is dropped).
    fn finish_load(&self, i: usize, chunk: Option<DeviceChunk>) {
        let mut s = self.lock();
        if matches!(s[i], Slot::Loading(_)) {
            s[i] = match chunk {
                Some(c) => Slot::Loaded(c),
                None => Slot::Failed,
            };
        }
    }
}

/// Everything the I/O side of one request needs.
pub(crate) struct IoJob {
    pub plan: Arc<LoadPlan>,
    pub store: Arc<dyn KvStore>,
    pub keys: Vec<ChunkKey>,
    pub ctx: ChunkContext,
    pub order: IoOrder,
    pub depth: usize,
    pub meter: Arc<IoMeter>,
    pub chunk_bytes: u64,
    /// Chunks counted as queued I/O when the job was planned.
    pub planned_chunks: u64,
    /// Called after every load that finished (the scheduler's wake-up).
    pub wake: Arc<dyn Fn() + Send + Sync>,
    /// Chunks already claimed by [`IoJob::prime`], loaded first.
    pub primed: Vec<usize>,
    /// Where loaded chunks go (the model's device).
    pub device: cake_kernels::Device,
}

impl IoJob {
    /// Claims the first `depth` chunks in the I/O side's order before the
    /// request reaches the scheduler, so both sides start together rather
    /// than compute winning its first claims by scheduling accident.
    pub(crate) fn prime(&mut self) {
        let n = self.plan.lock().len();
        let order: Vec<usize> = match self.order {
            IoOrder::BackToFront => (0..n).rev().collect(),
            IoOrder::FrontToBack => (0..n).collect(),
        };
        for i in order {
            if self.primed.len() >= self.depth {
                break;
            }
            if self.plan.claim_for_io(i) {
                self.primed.push(i);
            }
        }
    }
}

/// Runs the I/O side: keeps up to `depth` loads in flight, claiming chunks
/// in `order`; in `BackToFront` order it stops at the first chunk compute
/// has claimed (the meeting point). Holes are skipped: they stay for
/// compute, and a stored run after a hole is still loaded. A load whose
/// chunk compute took over is dropped at once, and every load when the
/// request is cancelled: dropping a load stops its transfer.
pub(crate) async fn run_io(job: IoJob) {
    let n = job.plan.lock().len();
    let mut order: Box<dyn Iterator<Item = usize> + Send> = match job.order {
        IoOrder::BackToFront => Box::new((0..n).rev()),
        IoOrder::FrontToBack => Box::new(0..n),
    };
    let mut inflight = FuturesUnordered::new();
    // The abort handle of each load in flight, by chunk.
    let mut aborts: Vec<(usize, AbortHandle)> = Vec::new();
    let mut exhausted = false;
    let mut issued = 0u64;
    let io = &*job.meter;
    let mut primed = job.primed.clone().into_iter();
    loop {
        while !exhausted && inflight.len() < job.depth && !job.plan.cancelled() {
            let i = if let Some(i) = primed.next() {
                i
            } else {
                let Some(i) = order.next() else {
                    exhausted = true;
                    break;
                };
                if job.primed.contains(&i) {
                    continue;
                }
                i
            };
            let already_claimed = job.primed.contains(&i);
            let stop = !already_claimed && {
                let s = job.plan.lock();
                match s[i] {
                    Slot::Stored => false,
                    // Compute's, or a sibling's: not the I/O side's to load.
                    Slot::Hole | Slot::Sibling(_) | Slot::Shared(_) => continue,
                    // Compute got here first: the two sides have met.
                    _ => job.order == IoOrder::BackToFront,
                }
            };
            if stop {
                exhausted = true;
                break;
            }
            if !already_claimed && !job.plan.claim_for_io(i) {
                if job.order == IoOrder::BackToFront {
                    exhausted = true;
                    break;
                }
                continue;
            }
            let (store, ctx, key) = (job.store.clone(), job.ctx, job.keys[i]);
            let meter = job.meter.clone();
            let bytes = job.chunk_bytes;
            let device = job.device;
            issued += 1;
            meter.begin();
            let (handle, registration) = AbortHandle::new_pair();
            aborts.push((i, handle));
            let load = async move {
                let chunk = load_chunk_to(store.as_ref(), key, &ctx, i as u32, device).await;
                meter.end(bytes, chunk.is_some());
                chunk
            };
            inflight.push(async move { (i, Abortable::new(load, registration).await) });
        }
        if job.plan.cancelled() {
            // Dropping the futures drops the loads in flight.
            io.abandon(inflight.len() as u64);
            io.unplan((job.planned_chunks.saturating_sub(issued)) * job.chunk_bytes);
            io.unplan(inflight.len() as u64 * job.chunk_bytes);
            return;
        }
        let next = tokio::select! {
            next = inflight.next() => next,
            () = job.plan.changed.notified() => {
                // Compute took over some chunks being loaded, or the request
                // was cancelled (handled at the top of the loop).
                let s = job.plan.lock();
                for (i, handle) in &aborts {
                    if !matches!(s[*i], Slot::Loading(_)) {
                        handle.abort();
                    }
                }
                continue;
            }
        };
        match next {
            Some((i, result)) => {
                aborts.retain(|(j, _)| *j != i);
                match result {
                    Ok(chunk) => {
                        job.plan.finish_load(i, chunk);
                        (job.wake)();
                    }
                    Err(_aborted) => {
                        io.abandon(1);
                        io.unplan(job.chunk_bytes);
                    }
                }
            }
            None => {
                // Chunks compute took were planned as I/O but never loaded.
                io.unplan(job.planned_chunks.saturating_sub(issued) * job.chunk_bytes);
                return;
            }
        }
    }
}
