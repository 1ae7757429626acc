//! `tiered`: stores in order, fastest first (memory → disk → redis).
//!
//! Reads try each tier in turn and promote a hit into the faster tiers.
//! Writes go behind the request: `put` returns at once and the chunk is
//! written by a background task into every tier that does not hold it yet.
//! Until it has landed, the chunk answers lookups and reads from the
//! write-behind itself: a chunk is visible the moment it is put, so a
//! request sent right after the one that computed it finds it (it is in
//! this process's memory already). The bytes accepted but not yet written
//! are bounded; past the bound a write is dropped (and counted) rather than
//! making the request wait or memory grow — a cache that misses a write
//! only recomputes later.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::future::{BoxFuture, join_all};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::format::EncodedChunk;
use super::key::ChunkKey;
use super::store::{Counters, KvStore, StoreError, StoreStats, Tier};
use super::telemetry;

pub struct TieredStore {
    tiers: Vec<Arc<dyn KvStore>>,
    writer: Arc<WriteBehind>,
}

struct WriteBehind {
    max_bytes: u64,
    bytes: AtomicU64,
    tasks: AtomicUsize,
    /// Chunks accepted and not yet written to every target tier: they
    /// answer lookups and reads meanwhile.
    pending: Mutex<HashMap<ChunkKey, EncodedChunk>>,
    idle: Notify,
    counters: Counters,
}

impl TieredStore {
    /// `tiers` fastest first; `max_bytes_in_flight` bounds the write-behind.
    pub fn new(tiers: Vec<Arc<dyn KvStore>>, max_bytes_in_flight: u64) -> TieredStore {
        TieredStore {
            tiers,
            writer: Arc::new(WriteBehind {
                max_bytes: max_bytes_in_flight,
                bytes: AtomicU64::new(0),
                tasks: AtomicUsize::new(0),
                pending: Mutex::new(HashMap::new()),
                idle: Notify::new(),
                counters: Counters::new("tiered"),
            }),
        }
    }

    pub fn tiers(&self) -> &[Arc<dyn KvStore>] {
        &self.tiers
    }

    /// Writes `chunk` into `targets` behind the caller.
    fn write_behind(&self, chunk: EncodedChunk, targets: Vec<Arc<dyn KvStore>>) {
        let w = &self.writer;
        let key = chunk.key();
        let len = chunk.len() as u64;
        if targets.is_empty() {
            return;
        }
        {
            let mut pending = w.pending.lock();
            if pending.contains_key(&key) {
                drop(pending);
                w.counters.skipped();
                return;
            }
            pending.insert(key, chunk.clone());
        }
        let reserved = w
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b + len <= w.max_bytes).then_some(b + len)
            });
        if reserved.is_err() {
            w.pending.lock().remove(&key);
            w.counters.dropped();
            tracing::debug!(%key, bytes = len, "write-behind budget full; chunk not stored");
            return;
        }
        w.tasks.fetch_add(1, Ordering::AcqRel);
        telemetry::write_behind_bytes(w.bytes.load(Ordering::Relaxed));
        let w = self.writer.clone();
        tokio::spawn(async move {
            let writes = targets.iter().map(|t| {
                let chunk = chunk.clone();
                let w = &w;
                async move {
                    if t.lookup(&[key]).await.first().copied().flatten().is_some() {
                        w.counters.skipped();
                        return;
                    }
                    if let Err(e) = t.put(chunk).await {
                        tracing::debug!(%key, store = t.name(), error = %e, "write-behind failed");
                    }
                }
            });
            join_all(writes).await;
            w.pending.lock().remove(&key);
            w.bytes.fetch_sub(len, Ordering::AcqRel);
            telemetry::write_behind_bytes(w.bytes.load(Ordering::Relaxed));
            if w.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
                w.idle.notify_waiters();
            }
        });
    }
}

impl WriteBehind {
    /// A chunk still being written behind, counted as a hit.
    fn pending_get(&self, key: ChunkKey) -> Option<EncodedChunk> {
        let chunk = self.pending.lock().get(&key).cloned()?;
        self.counters.hit(chunk.len());
        Some(chunk)
    }

    /// Which of `keys` are being written behind (they are in this
    /// process's memory), and the indices of the others.
    fn pending_lookup(&self, keys: &[ChunkKey]) -> (Vec<Option<Tier>>, Vec<usize>) {
        let pending = self.pending.lock();
        let out: Vec<Option<Tier>> = keys
            .iter()
            .map(|k| pending.contains_key(k).then_some(Tier::Memory))
            .collect();
        let missing = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        (out, missing)
    }
}

impl KvStore for TieredStore {
    fn name(&self) -> &'static str {
        "tiered"
    }

    fn lookup<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<Tier>>> {
        Box::pin(async move {
            self.writer.counters.lookups(keys.len());
            let (mut out, mut missing) = self.writer.pending_lookup(keys);
            for tier in &self.tiers {
                if missing.is_empty() {
                    break;
                }
                let ask: Vec<ChunkKey> = missing.iter().map(|&i| keys[i]).collect();
                let found = tier.lookup(&ask).await;
                let mut still = Vec::new();
                for (i, f) in missing.into_iter().zip(found) {
                    match f {
                        Some(t) => out[i] = Some(t),
                        None => still.push(i),
                    }
                }
                missing = still;
            }
            out
        })
    }

    fn get(&self, key: ChunkKey) -> BoxFuture<'_, Option<EncodedChunk>> {
        Box::pin(async move {
            if let Some(chunk) = self.writer.pending_get(key) {
                return Some(chunk);
            }
            for (i, tier) in self.tiers.iter().enumerate() {
                if let Some(chunk) = tier.get(key).await {
                    self.writer.counters.hit(chunk.len());
                    self.write_behind(chunk.clone(), self.tiers[..i].to_vec());
                    return Some(chunk);
                }
            }
            self.writer.counters.miss();
            None
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<EncodedChunk>>> {
        Box::pin(async move {
            let mut out: Vec<Option<EncodedChunk>> =
                keys.iter().map(|&k| self.writer.pending_get(k)).collect();
            let mut missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
            for (t, tier) in self.tiers.iter().enumerate() {
                if missing.is_empty() {
                    break;
                }
                let ask: Vec<ChunkKey> = missing.iter().map(|&i| keys[i]).collect();
                let got = tier.get_many(&ask).await;
                let mut still = Vec::new();
                for (i, g) in missing.into_iter().zip(got) {
                    match g {
                        Some(chunk) => {
                            self.writer.counters.hit(chunk.len());
                            self.write_behind(chunk.clone(), self.tiers[..t].to_vec());
                            out[i] = Some(chunk);
                        }
                        None => still.push(i),
                    }
                }
                missing = still;
            }
            missing.iter().for_each(|_| self.writer.counters.miss());
            out
        })
    }

    /// Accepted for writing behind the caller; never waits for a tier.
    fn put(&self, chunk: EncodedChunk) -> BoxFuture<'_, Result<(), StoreError>> {
        self.writer.counters.written(chunk.len());
        self.write_behind(chunk, self.tiers.clone());
        Box::pin(async { Ok(()) })
    }

    fn delete(&self, key: ChunkKey) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.writer.pending.lock().remove(&key);
            let results = join_all(self.tiers.iter().map(|t| t.delete(key))).await;
            self.writer.counters.deleted();
            results
                .into_iter()
                .collect::<Result<Vec<()>, _>>()
                .map(|_| ())
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let idle = self.writer.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.writer.tasks.load(Ordering::Acquire) == 0 {
                    break;
                }
                idle.await;
            }
            join_all(self.tiers.iter().map(|t| t.flush())).await;
        })
    }

    fn stats(&self) -> StoreStats {
        let mut s = self.writer.counters.snapshot();
        s.in_flight_bytes = self.writer.bytes.load(Ordering::Relaxed);
        s.capacity_bytes = self.writer.max_bytes;
        s.inner = self.tiers.iter().map(|t| t.stats()).collect();
        s.entries = s.inner.iter().map(|t| t.entries).sum();
        s.stored_bytes = s.inner.iter().map(|t| t.stored_bytes).sum();
        s
    }
}
