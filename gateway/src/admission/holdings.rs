//! What each worker holds in its own tiers, as the gateway knows it: the
//! chunks of the prompts it placed there. A worker stores every chunk it
//! computes or loads in its local tiers (memory, disk) on the way, so the
//! prompts routed to it are a close record of what it can serve without a
//! prefill or a crossing of the shared store's link; placement reads it as
//! [`cake_policy::WorkerView::local_tokens`].
//!
//! Each worker's record is bounded by about the number of chunks its local
//! tiers keep (`policy.local_chunks_per_worker`), least recently used out
//! first, as the worker's own tiers evict: two generations of up to that
//! many each; a hit in the old one moves to the new one, and when the new
//! one fills the old one is dropped whole (O(1) per chunk, memory
//! bounded). So the record keeps at least the `capacity` chunks used last
//! and at most twice as many: it never forgets what the worker's tiers
//! still hold, and may remember some they have evicted (a request sent
//! back for those recomputes, as under `cache-affinity`). Generations of
//! half the capacity each kept between half and all of it, and in the
//! fleet benchmark the gateway forgot prefixes its workers still held.

use std::collections::HashSet;

use super::prefixes::ChunkId;

/// See the module docs.
#[derive(Debug)]
pub struct Holdings {
    /// Chunks one generation holds.
    half: usize,
    workers: Vec<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    young: HashSet<ChunkId>,
    old: HashSet<ChunkId>,
}

impl Holdings {
    /// A record for `workers` workers keeping at least the last `capacity`
    /// chunks each (at most twice that); `capacity` 0 records nothing
    /// (every worker holds nothing).
    pub fn new(workers: usize, capacity: usize) -> Holdings {
        Holdings {
            half: capacity,
            workers: (0..workers).map(|_| Generations::default()).collect(),
        }
    }

    /// `worker` now holds `ids` (a prompt's chunks placed there). They are
    /// touched last to first, as the worker's loader reads them (from the
    /// back), so its first chunks are the last forgotten, as in the
    /// worker's own tiers, and what is left of a prompt is a run from its
    /// front, which is what [`Holdings::leading`] counts.
    pub fn record(&mut self, worker: usize, ids: &[ChunkId]) {
        let half = self.half;
        if half == 0 {
            return;
        }
        if let Some(g) = self.workers.get_mut(worker) {
            for id in ids.iter().rev() {
                g.touch(*id, half);
            }
        }
    }

    /// How many of `ids`, from the first, `worker` holds (the engine reads
    /// a prompt's chunks as a run from the front). A hit counts as a use.
    pub fn leading(&mut self, worker: usize, ids: &[ChunkId]) -> usize {
        let half = self.half;
        let Some(g) = self.workers.get_mut(worker) else {
            return 0;
        };
        let n = ids
            .iter()
            .take_while(|id| g.young.contains(*id) || g.old.contains(*id))
            .count();
        for id in &ids[..n] {
            g.touch(*id, half);
        }
        n
    }

    #[cfg(test)]
    fn len(&self, worker: usize) -> usize {
        self.workers
            .get(worker)
            .map_or(0, |g| g.young.len() + g.old.len())
    }
}

impl Generations {
    fn touch(&mut self, id: ChunkId, half: usize) {
        if self.young.contains(&id) {
            return;
        }
        if self.young.len() >= half {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&id);
        self.young.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> ChunkId {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k
    }

    fn ids(r: std::ops::Range<u32>) -> Vec<ChunkId> {
        r.map(id).collect()
    }

    #[test]
    fn a_worker_holds_what_was_placed_on_it_only() {
        let mut h = Holdings::new(2, 100);
        h.record(0, &ids(0..6));
        assert_eq!(h.leading(0, &ids(0..10)), 6);
        assert_eq!(h.leading(1, &ids(0..10)), 0);
        // A run from the front: a gap ends it.
        assert_eq!(h.leading(0, &[id(0), id(1), id(50), id(2)]), 2);
        // Out of range workers hold nothing.
        assert_eq!(h.leading(7, &ids(0..2)), 0);
        h.record(7, &ids(0..2));
    }

    #[test]
    fn the_record_is_bounded_and_keeps_what_is_used() {
        let mut h = Holdings::new(1, 20);
        h.record(0, &ids(0..4));
        // Fewer new chunks a round than a generation holds: a chunk read
        // every round is never in the generation that is dropped.
        for i in 0..10 {
            h.record(0, &ids(100 + 5 * i..105 + 5 * i));
            assert!(h.len(0) <= 40);
            // The first prompt is read again between the others: it stays.
            assert_eq!(h.leading(0, &ids(0..4)), 4, "round {i}");
        }
        // What was not used again is gone.
        assert_eq!(h.leading(0, &ids(100..105)), 0);
    }

    #[test]
    fn the_record_keeps_at_least_the_last_capacity_chunks() {
        // Placed one after the other: whatever the generations' phase,
        // the last 20 placed are all still held.
        let mut h = Holdings::new(1, 20);
        h.record(0, &ids(0..20));
        for n in 20..70 {
            h.record(0, &[id(n)]);
            let last: Vec<ChunkId> = (n - 19..=n).rev().map(id).collect();
            assert_eq!(h.leading(0, &last), 20, "after chunk {n}");
            assert!(h.len(0) <= 40);
        }
    }

    #[test]
    fn a_prompt_is_forgotten_from_its_back() {
        let mut h = Holdings::new(1, 4);
        h.record(0, &[id(100), id(101)]);
        // The prompt straddles a generation: its back goes in the one that
        // is dropped first.
        h.record(0, &ids(0..4));
        h.record(0, &[id(200), id(201)]);
        h.record(0, &[id(300)]);
        assert_eq!(h.leading(0, &ids(0..4)), 2);
    }

    #[test]
    fn capacity_zero_records_nothing() {
        let mut h = Holdings::new(2, 0);
        h.record(0, &ids(0..4));
        assert_eq!(h.leading(0, &ids(0..4)), 0);
    }
}
