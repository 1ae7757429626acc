//! `memory`: chunks in this process, bounded in bytes, least recently used
//! evicted first. Chunks are held as they were checked on their way in
//! (from the encoder, or from a slower tier), so reads do no checking and
//! no copying: a hit hands out a reference-counted view.

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::format::EncodedChunk;
use super::key::ChunkKey;
use super::lru::Lru;
use super::store::{Counters, KvStore, StoreError, StoreStats, Tier};
use super::telemetry;

/// Bytes charged per entry on top of the chunk: the map slot, the order
/// entry and the parsed header. Keeps many tiny chunks from overrunning
/// the capacity.
const ENTRY_OVERHEAD: u64 = 256;

pub struct MemoryStore {
    lru: Mutex<Lru<EncodedChunk>>,
    counters: Counters,
}

impl MemoryStore {
    pub fn new(capacity_bytes: u64) -> MemoryStore {
        MemoryStore {
            lru: Mutex::new(Lru::new(capacity_bytes)),
            counters: Counters::new("memory"),
        }
    }

    fn cost(chunk: &EncodedChunk) -> u64 {
        chunk.len() as u64 + ENTRY_OVERHEAD
    }

    fn put_now(&self, chunk: EncodedChunk) -> Result<(), StoreError> {
        let key = chunk.key();
        let bytes = chunk.len();
        let cost = Self::cost(&chunk);
        let (result, stored) = {
            let mut lru = self.lru.lock();
            if lru.get(&key).is_some() {
                drop(lru);
                self.counters.skipped();
                return Ok(());
            }
            let capacity = lru.capacity();
            (
                lru.insert(key, chunk, cost)
                    .map_err(|_| StoreError::TooLarge {
                        store: "memory",
                        bytes: cost,
                        capacity,
                    }),
                lru.bytes(),
            )
        };
        match result {
            Ok(evicted) => {
                self.counters.written(bytes);
                if !evicted.is_empty() {
                    self.counters.evicted(evicted.len());
                }
                telemetry::stored_bytes("memory", stored);
                Ok(())
            }
            Err(e) => {
                self.counters.dropped();
                Err(e)
            }
        }
    }
}

impl KvStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn lookup<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<Tier>>> {
        self.counters.lookups(keys.len());
        let lru = self.lru.lock();
        let found = keys
            .iter()
            .map(|k| lru.contains(k).then_some(Tier::Memory))
            .collect();
        drop(lru);
        Box::pin(async move { found })
    }

    fn get(&self, key: ChunkKey) -> BoxFuture<'_, Option<EncodedChunk>> {
        let found = self.lru.lock().get(&key).cloned();
        match &found {
            Some(c) => self.counters.hit(c.len()),
            None => self.counters.miss(),
        }
        Box::pin(async move { found })
    }

    fn put(&self, chunk: EncodedChunk) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = self.put_now(chunk);
        Box::pin(async move { result })
    }

    fn delete(&self, key: ChunkKey) -> BoxFuture<'_, Result<(), StoreError>> {
        if self.lru.lock().remove(&key).is_some() {
            self.counters.deleted();
        }
        Box::pin(async { Ok(()) })
    }

    fn stats(&self) -> StoreStats {
        let mut s = self.counters.snapshot();
        let lru = self.lru.lock();
        s.entries = lru.len() as u64;
        s.stored_bytes = lru.bytes();
        s.capacity_bytes = lru.capacity();
        s
    }
}
