//! `throttle`: a store behind a simulated storage link with a bandwidth
//! and a per-operation latency (the paper simulated 7–100 Gbps this way).
//!
//! The link is a virtual clock shared by everything going through it:
//! each transfer takes `bytes / bandwidth` of the link, starting when both
//! the link is free and the operation's latency has passed, so concurrent
//! readers split the bandwidth between them and latencies overlap as on a
//! real pipelined link. A transfer waits until its virtual end; if the
//! inner store itself took longer, there is no extra wait. Uses tokio's
//! clock, so tests run it with paused time.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::format::EncodedChunk;
use super::key::ChunkKey;
use super::store::{KvStore, StoreError, StoreStats, Tier};

/// A shared link: bandwidth in bytes/s (0: unlimited) and latency.
#[derive(Debug)]
pub struct Link {
    bytes_per_s: u64,
    latency: Duration,
    free_at: Mutex<Option<Instant>>,
}

impl Link {
    pub fn new(bytes_per_s: u64, latency: Duration) -> Link {
        Link {
            bytes_per_s,
            latency,
            free_at: Mutex::new(None),
        }
    }

    /// Waits out an operation that began at `began` and moves `bytes`.
    pub async fn transfer(&self, began: Instant, bytes: u64) {
        let ready = began + self.latency;
        let done = if self.bytes_per_s == 0 || bytes == 0 {
            ready
        } else {
            let took = Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
            let mut free_at = self.free_at.lock();
            let start = free_at.map_or(ready, |f| f.max(ready));
            let end = start + took;
            *free_at = Some(end);
            end
        };
        tokio::time::sleep_until(done).await;
    }
}

pub struct ThrottledStore {
    inner: Arc<dyn KvStore>,
    link: Arc<Link>,
    writes: bool,
}

impl ThrottledStore {
    /// `writes`: whether writes also use the link's bandwidth (they always
    /// pay its latency).
    pub fn new(inner: Arc<dyn KvStore>, link: Arc<Link>, writes: bool) -> ThrottledStore {
        ThrottledStore {
            inner,
            link,
            writes,
        }
    }

    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }
}

impl KvStore for ThrottledStore {
    fn name(&self) -> &'static str {
        "throttle"
    }

    fn lookup<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<Tier>>> {
        Box::pin(async move {
            let began = Instant::now();
            let out = self.inner.lookup(keys).await;
            self.link.transfer(began, 0).await;
            out
        })
    }

    fn get(&self, key: ChunkKey) -> BoxFuture<'_, Option<EncodedChunk>> {
        Box::pin(async move {
            let began = Instant::now();
            let out = self.inner.get(key).await;
            let bytes = out.as_ref().map_or(0, |c| c.len() as u64);
            self.link.transfer(began, bytes).await;
            out
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<EncodedChunk>>> {
        Box::pin(async move {
            let began = Instant::now();
            let out = self.inner.get_many(keys).await;
            let bytes = out.iter().flatten().map(|c| c.len() as u64).sum();
            self.link.transfer(began, bytes).await;
            out
        })
    }

    fn put(&self, chunk: EncodedChunk) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let began = Instant::now();
            let bytes = if self.writes { chunk.len() as u64 } else { 0 };
            let out = self.inner.put(chunk).await;
            self.link.transfer(began, bytes).await;
            out
        })
    }

    fn delete(&self, key: ChunkKey) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let began = Instant::now();
            let out = self.inner.delete(key).await;
            self.link.transfer(began, 0).await;
            out
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        self.inner.flush()
    }

    fn stats(&self) -> StoreStats {
        let inner = self.inner.stats();
        StoreStats {
            name: "throttle".to_string(),
            lookups: inner.lookups,
            hits: inner.hits,
            misses: inner.misses,
            corrupt: inner.corrupt,
            errors: inner.errors,
            bytes_read: inner.bytes_read,
            bytes_written: inner.bytes_written,
            entries: inner.entries,
            stored_bytes: inner.stored_bytes,
            inner: vec![inner],
            ..StoreStats::default()
        }
    }
}
