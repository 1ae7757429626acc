//! The bidirectional loader's shared state for one request: a slot per
//! chunk of the cached range, claimed by exactly one side (compute from the
//! front, I/O from the back) before that side works on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use futures::future::{AbortHandle, Abortable};
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;

use super::scheduler::Shared;
use crate::cache::DeviceChunk;
use crate::kv::{ChunkContext, ChunkKey, KvStore, load_chunk_to};

/// One chunk of the cached range.
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
    /// Taken into the request's KV cache.
    Used,
    /// The load failed (missing, corrupt, store down): compute takes it.
    Failed,
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
    pub(crate) fn new(stored: &[bool]) -> Arc<LoadPlan> {
        Arc::new(LoadPlan {
            slots: Mutex::new(
                stored
                    .iter()
                    .map(|&s| if s { Slot::Stored } else { Slot::Hole })
                    .collect(),
            ),
            cancelled: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // A poisoned lock means a panic elsewhere; the slots themselves are
        // always in a consistent state between statements.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
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
    pub meter: Arc<Shared>,
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
    let io = &job.meter.io;
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
                    Slot::Hole => continue,
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
            meter.io.begin();
            let (handle, registration) = AbortHandle::new_pair();
            aborts.push((i, handle));
            let load = async move {
                let chunk = load_chunk_to(store.as_ref(), key, &ctx, i as u32, device).await;
                meter.io.end(bytes, chunk.is_some());
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
