//! Chunks that requests running on this worker have computed or are
//! computing: a third source of KV beside computing and loading. A request
//! whose prompt shares a new prefix with one already running (a burst
//! fanning out over one document) takes that request's chunks instead of
//! computing them again.
//!
//! When a request is planned it registers, under one lock, as the
//! *producer* of each full chunk of its prompt that is neither stored nor
//! produced by another request, and as a *waiter* (its load plan and the
//! chunk's index there) on the chunks another request produces. When a
//! producer has computed a chunk it hands every waiter a copy (taken in
//! like a loaded chunk, for free). The entry stays until the producer ends,
//! so a request planned later is served from the producer's cache too (the
//! scheduler copies the chunk for it: [`Siblings::take_late`]) — no window
//! in which a chunk is neither in the registry nor in a store. When a
//! producer ends (finished, failed, cancelled), its entries go, and its
//! waiters' slots for chunks it never handed over become holes their own
//! compute side fills: never an error, never a hang. A waiter whose
//! producer is not running (queued behind `max_running`) computes the
//! chunk itself rather than wait on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use parking_lot::{Mutex, MutexGuard};

use super::loader::LoadPlan;
use crate::EngineError;
use crate::cache::DeviceChunk;
use crate::kv::ChunkKey;

/// One request as a producer: its serial on this worker and whether the
/// scheduler is running it.
#[derive(Debug, Clone)]
pub(crate) struct ProducerId {
    pub serial: u64,
    pub running: Arc<AtomicBool>,
}

struct Produced {
    producer: ProducerId,
    /// The chunk's index in the producer's prompt.
    index: usize,
    /// Computed: in the producer's cache now.
    done: bool,
    /// Load plans waiting for this chunk, with its index in each.
    waiters: Vec<(Arc<LoadPlan>, usize)>,
}

/// A waiter registered after its chunk was computed: the scheduler copies
/// chunk `index` of producer `serial`'s cache into slot `slot` of `plan`.
pub(crate) struct Late {
    pub serial: u64,
    pub index: usize,
    pub plan: Arc<LoadPlan>,
    pub slot: usize,
}

#[derive(Default)]
struct Registry {
    chunks: HashMap<ChunkKey, Produced>,
    late: Vec<Late>,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Siblings {
    inner: Mutex<Registry>,
}

/// The registry held for planning one request.
pub(crate) struct Planning<'a> {
    reg: MutexGuard<'a, Registry>,
}

impl Planning<'_> {
    /// Whether another request has computed or is computing `key`: the
    /// flag saying whether it runs now.
    pub fn producer(&self, key: &ChunkKey) -> Option<Arc<AtomicBool>> {
        self.reg.chunks.get(key).map(|p| p.producer.running.clone())
    }

    /// Registers `producer` as computing `key`, chunk `index` of its
    /// prompt (unless another already is).
    pub fn produce(&mut self, key: ChunkKey, index: usize, producer: &ProducerId) {
        self.reg.chunks.entry(key).or_insert_with(|| Produced {
            producer: producer.clone(),
            index,
            done: false,
            waiters: Vec::new(),
        });
    }

    /// Registers slot `slot` of `plan` as waiting for `key`'s producer.
    pub fn wait(&mut self, key: &ChunkKey, plan: &Arc<LoadPlan>, slot: usize) {
        let reg = &mut *self.reg;
        let Some(p) = reg.chunks.get_mut(key) else {
            return;
        };
        if p.done {
            reg.late.push(Late {
                serial: p.producer.serial,
                index: p.index,
                plan: plan.clone(),
                slot,
            });
        } else {
            p.waiters.push((plan.clone(), slot));
        }
    }
}

impl Siblings {
    /// Holds the registry while a request is planned against it.
    pub fn planning(&self) -> Planning<'_> {
        Planning {
            reg: self.inner.lock(),
        }
    }

    /// For each key, whether a request here has computed or is computing it.
    pub fn in_flight(&self, keys: &[ChunkKey]) -> Vec<bool> {
        let reg = self.inner.lock();
        keys.iter().map(|k| reg.chunks.contains_key(k)).collect()
    }

    /// Producer `serial` has computed `key`: every waiter still waiting
    /// gets the chunk `make()` builds (once, copied for each). Returns how
    /// many took it.
    pub fn computed(
        &self,
        key: &ChunkKey,
        serial: u64,
        make: impl FnOnce() -> Result<DeviceChunk, EngineError>,
    ) -> usize {
        let waiters = {
            let mut reg = self.inner.lock();
            match reg.chunks.get_mut(key) {
                Some(p) if p.producer.serial == serial => {
                    p.done = true;
                    std::mem::take(&mut p.waiters)
                }
                _ => return 0,
            }
        };
        offer(waiters, make)
    }

    /// Waiters registered after their chunk was computed, for the
    /// scheduler to serve from the producers' caches.
    pub fn take_late(&self) -> Vec<Late> {
        let mut reg = self.inner.lock();
        if reg.late.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut reg.late)
    }

    /// Producer `serial` has ended: its chunks leave the registry, and the
    /// ones it never handed over go to their waiters' own compute side.
    pub fn release(&self, serial: u64, keys: &[ChunkKey]) {
        let mut gone = Vec::new();
        {
            let mut reg = self.inner.lock();
            for key in keys {
                if reg
                    .chunks
                    .get(key)
                    .is_some_and(|p| p.producer.serial == serial)
                    && let Some(p) = reg.chunks.remove(key)
                {
                    gone.extend(p.waiters);
                }
            }
            reg.late.retain(|l| {
                let mine = l.serial == serial;
                if mine {
                    gone.push((l.plan.clone(), l.slot));
                }
                !mine
            });
        }
        for (plan, i) in gone {
            plan.sibling_gone(i);
        }
    }
}

/// Hands the chunk `make()` builds to every waiter still waiting (when
/// it cannot be built, they compute it themselves). Returns how many
/// took it.
pub(crate) fn offer(
    waiters: Vec<(Arc<LoadPlan>, usize)>,
    make: impl FnOnce() -> Result<DeviceChunk, EngineError>,
) -> usize {
    let waiting: Vec<_> = waiters
        .into_iter()
        .filter(|(plan, i)| plan.waits_for_sibling(*i))
        .collect();
    if waiting.is_empty() {
        return 0;
    }
    let chunk = match make() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "could not copy a computed chunk for its waiters; they compute it");
            for (plan, i) in &waiting {
                plan.sibling_gone(*i);
            }
            return 0;
        }
    };
    waiting
        .into_iter()
        .map(|(plan, i)| usize::from(plan.offer_shared(i, chunk.clone())))
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::cache::KvLayout;
    use crate::worker::loader::{Front, Source};
    use cake_kernels::Device;

    fn producer(serial: u64) -> ProducerId {
        ProducerId {
            serial,
            running: Arc::new(AtomicBool::new(true)),
        }
    }

    fn chunk() -> DeviceChunk {
        let layout = KvLayout {
            layers: 1,
            kv_heads: 1,
            head_dim: 2,
        };
        DeviceChunk::from_planes(layout, 4, Device::Cpu, |p, out| out.fill(p as f32)).unwrap()
    }

    fn waiter(reg: &Siblings, key: ChunkKey) -> Arc<LoadPlan> {
        let mut planning = reg.planning();
        let running = planning.producer(&key).unwrap();
        let plan = LoadPlan::from_sources(vec![Source::Sibling(running)]);
        planning.wait(&key, &plan, 0);
        plan
    }

    #[test]
    fn waiters_get_the_chunk_once_computed_and_late_ones_through_the_scheduler() {
        let reg = Siblings::default();
        let key = ChunkKey([1; 32]);
        reg.planning().produce(key, 3, &producer(7));
        let early = waiter(&reg, key);
        assert_eq!(
            early.claim_front(0, true, false, |_| true).unwrap(),
            Front::WaitSibling
        );
        assert_eq!(reg.computed(&key, 8, || Ok(chunk())), 0, "not the producer");
        assert_eq!(reg.computed(&key, 7, || Ok(chunk())), 1);
        assert!(early.take_landed(0).is_some_and(|(_, shared)| shared));
        // Planned after the chunk was computed: served from the producer.
        let late = waiter(&reg, key);
        let served = reg.take_late();
        assert_eq!(served.len(), 1);
        assert_eq!((served[0].serial, served[0].index), (7, 3));
        assert!(reg.in_flight(&[key])[0], "kept while the producer lives");
        reg.release(7, &[key]);
        assert!(!reg.in_flight(&[key])[0]);
        drop(late);
    }

    #[test]
    fn a_producer_that_ends_first_leaves_holes_for_compute() {
        let reg = Siblings::default();
        let (a, b) = (ChunkKey([1; 32]), ChunkKey([2; 32]));
        reg.planning().produce(a, 0, &producer(1));
        reg.planning().produce(b, 1, &producer(1));
        let wa = waiter(&reg, a);
        reg.computed(&a, 1, || Ok(chunk()));
        let wb = waiter(&reg, b);
        let late = waiter(&reg, a);
        reg.release(1, &[a, b]);
        // Handed over before the end: kept. Never handed over: a hole.
        assert!(wa.take_landed(0).is_some());
        assert_eq!(
            wb.claim_front(0, true, false, |_| true).unwrap(),
            Front::Compute
        );
        assert_eq!(
            late.claim_front(0, true, false, |_| true).unwrap(),
            Front::Compute
        );
        assert!(reg.take_late().is_empty());
    }

    #[test]
    fn a_waiter_computes_a_chunk_whose_producer_is_not_running() {
        let reg = Siblings::default();
        let key = ChunkKey([3; 32]);
        let p = producer(1);
        reg.planning().produce(key, 0, &p);
        let w = waiter(&reg, key);
        p.running.store(false, Ordering::Release);
        assert_eq!(
            w.claim_front(0, false, false, |_| true).unwrap(),
            Front::NoRoom
        );
        assert_eq!(
            w.claim_front(0, true, false, |_| true).unwrap(),
            Front::Compute
        );
        // The producer's copy arrives too late and is dropped.
        assert_eq!(reg.computed(&key, 1, || Ok(chunk())), 0);
    }
}
