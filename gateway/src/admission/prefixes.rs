//! The in-flight prefix registry: which worker is computing each chunk of
//! the prompts the gateway has placed and not yet seen end. A burst of
//! requests over one new document reaches the gateway before any worker
//! has stored a chunk of it; the registry lets the classify step count
//! those chunks as cached and placement send the burst to the worker
//! computing them, so the prefix is computed once in the fleet.
//!
//! Chunks are named by the gateway's own chained hash of the cache group
//! and the chunk's tokens (the gateway serves one model, so it needs
//! neither the worker's namespace nor its keys). Entries live as long as
//! the request that registered them; the first request to register a
//! chunk owns it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::sha256;

/// A chunk's identity at the gateway.
pub type ChunkId = [u8; 32];

/// Chained ids of the full chunks of `prompt` (of `chunk` tokens) in
/// `cache_group`: each covers every token before it, as chunk keys do.
pub fn chunk_ids(cache_group: &str, prompt: &[u32], chunk: usize) -> Vec<ChunkId> {
    if chunk == 0 {
        return Vec::new();
    }
    let mut prev = sha256::digest(cache_group.as_bytes());
    let mut buf = Vec::with_capacity(32 + 4 * chunk);
    prompt
        .chunks_exact(chunk)
        .map(|tokens| {
            buf.clear();
            buf.extend_from_slice(&prev);
            for t in tokens {
                buf.extend_from_slice(&t.to_le_bytes());
            }
            prev = sha256::digest(&buf);
            prev
        })
        .collect()
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

/// A prompt's chunks as placement weighs them against the registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrefixChunks {
    /// Every full chunk's id.
    pub ids: Vec<ChunkId>,
    /// Which are stored (where every worker reads them).
    pub stored: Vec<bool>,
    /// Chunks that may come from elsewhere: never the one holding the
    /// last prompt token.
    pub cap: usize,
    pub chunk_tokens: usize,
}

/// See the module docs.
#[derive(Default)]
pub struct InFlightPrefixes {
    /// Chunk → (worker index, owning registration).
    chunks: DashMap<ChunkId, (usize, u64)>,
    next: AtomicU64,
}

impl InFlightPrefixes {
    /// For each chunk, the worker computing it for a request in flight.
    pub fn workers(&self, ids: &[ChunkId]) -> Vec<Option<usize>> {
        ids.iter()
            .map(|id| self.chunks.get(id).map(|e| e.0))
            .collect()
    }

    /// The worker that computes (or computed) the most of `chunks` for
    /// requests in flight, and the tokens stored or computed there. A chunk
    /// already stored still counts for its producer's worker: there a
    /// sibling takes it from the producer with no link crossed, and a burst
    /// that arrives after its prefix is stored still lands together.
    pub fn best(&self, chunks: &PrefixChunks) -> Option<InFlightPrefix> {
        let cap = chunks.cap.min(chunks.ids.len());
        let workers = self.workers(&chunks.ids[..cap]);
        let stored = |i: usize| chunks.stored.get(i) == Some(&true);
        let mut best: Option<(usize, usize)> = None;
        for w in workers.iter() {
            let Some(w) = *w else { continue };
            if best.is_some_and(|(b, _)| b == w) {
                continue;
            }
            let n = (0..cap)
                .filter(|&j| stored(j) || workers[j] == Some(w))
                .count();
            if best.is_none_or(|(_, m)| n > m) {
                best = Some((w, n));
            }
        }
        best.map(|(worker, n)| InFlightPrefix {
            worker,
            cached_tokens: n * chunks.chunk_tokens,
        })
    }

    /// Records that `worker` computes `ids` (those no other request has
    /// registered) until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, ids: Vec<ChunkId>, worker: usize) -> PrefixGuard {
        let owner = self.next.fetch_add(1, Ordering::Relaxed);
        let mine = ids
            .into_iter()
            .filter(|id| {
                let mut new = false;
                self.chunks.entry(*id).or_insert_with(|| {
                    new = true;
                    (worker, owner)
                });
                new
            })
            .collect();
        PrefixGuard {
            registry: self.clone(),
            ids: mine,
            owner,
        }
    }

    /// Whether no chunk is registered.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// A request's registered chunks; dropping it clears them.
pub struct PrefixGuard {
    registry: Arc<InFlightPrefixes>,
    ids: Vec<ChunkId>,
    owner: u64,
}

impl Drop for PrefixGuard {
    fn drop(&mut self) {
        for id in &self.ids {
            self.registry
                .chunks
                .remove_if(id, |_, (_, owner)| *owner == self.owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_chained_and_per_group() {
        let a = chunk_ids("g", &[1, 2, 3, 4, 5], 2);
        assert_eq!(a.len(), 2, "only full chunks");
        let b = chunk_ids("g", &[1, 2, 9, 4], 2);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_ne!(chunk_ids("h", &[1, 2], 2)[0], a[0]);
        // A chunk's id covers the tokens before it.
        assert_ne!(chunk_ids("g", &[3, 4, 3, 4], 2)[1], a[1]);
        assert!(chunk_ids("g", &[1, 2], 0).is_empty());
    }

    #[test]
    fn best_is_the_worker_computing_the_most_of_the_rest() {
        let reg = Arc::new(InFlightPrefixes::default());
        let ids = chunk_ids("g", &(0..50).collect::<Vec<u32>>(), 8);
        let chunks = PrefixChunks {
            ids: ids.clone(),
            stored: vec![true, false, false, false, false, false],
            cap: 6,
            chunk_tokens: 8,
        };
        assert_eq!(reg.best(&chunks), None);
        let _a = reg.register(ids[..2].to_vec(), 0);
        let _b = reg.register(ids[2..5].to_vec(), 1);
        let best = reg.best(&chunks).unwrap();
        assert_eq!((best.worker, best.cached_tokens), (1, 4 * 8));
    }

    #[test]
    fn a_stored_chunk_still_points_at_its_producer() {
        let reg = Arc::new(InFlightPrefixes::default());
        let ids = chunk_ids("g", &(0..50).collect::<Vec<u32>>(), 8);
        let chunks = PrefixChunks {
            ids: ids.clone(),
            stored: vec![true; 6],
            cap: 6,
            chunk_tokens: 8,
        };
        let _a = reg.register(ids.clone(), 1);
        let best = reg.best(&chunks).unwrap();
        assert_eq!((best.worker, best.cached_tokens), (1, 6 * 8));
    }

    #[test]
    fn the_first_registration_owns_a_chunk_until_it_ends() {
        let reg = Arc::new(InFlightPrefixes::default());
        let ids = chunk_ids("g", &[1, 2, 3, 4, 5, 6], 2);
        let first = reg.register(ids[..2].to_vec(), 0);
        assert_eq!(reg.workers(&ids), vec![Some(0), Some(0), None]);
        let second = reg.register(ids.clone(), 1);
        assert_eq!(reg.workers(&ids), vec![Some(0), Some(0), Some(1)]);
        drop(first);
        // The second did not own the first two, so they are gone.
        assert_eq!(reg.workers(&ids), vec![None, None, Some(1)]);
        drop(second);
        assert!(reg.is_empty());
    }
}
