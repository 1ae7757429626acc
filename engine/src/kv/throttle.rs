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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::format::EncodedChunk;
use super::key::ChunkKey;
use super::store::{KvStore, StoreError, StoreStats, Tier};

/// A shared link: bandwidth in bytes/s (0: unlimited) and latency.
///
/// A transfer dropped before its end (a load that is no longer needed)
/// gives back the link time it has not used yet, when nothing queued
/// behind it has been scheduled: as a real link stops carrying a read that
/// was cancelled. Transfers already queued behind it keep their times.
#[derive(Debug)]
pub struct Link {
    bytes_per_s: u64,
    latency: Duration,
    state: Mutex<LinkState>,
}

#[derive(Debug, Default)]
struct LinkState {
    free_at: Option<Instant>,
    next_id: u64,
    /// Transfers scheduled to end in the future, in link order.
    pending: VecDeque<Reservation>,
}

#[derive(Debug)]
struct Reservation {
    id: u64,
    start: Instant,
    end: Instant,
    dropped: bool,
}

impl Link {
    pub fn new(bytes_per_s: u64, latency: Duration) -> Link {
        Link {
            bytes_per_s,
            latency,
            state: Mutex::new(LinkState::default()),
        }
    }

    /// Waits out an operation that began at `began` and moves `bytes`.
    pub async fn transfer(&self, began: Instant, bytes: u64) {
        let ready = began + self.latency;
        if self.bytes_per_s == 0 || bytes == 0 {
            tokio::time::sleep_until(ready).await;
            return;
        }
        let took = Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
        let (id, end) = {
            let mut st = self.state.lock();
            let now = Instant::now();
            while st.pending.front().is_some_and(|r| r.end <= now) {
                st.pending.pop_front();
            }
            let start = st.free_at.map_or(ready, |f| f.max(ready));
            let end = start + took;
            st.free_at = Some(end);
            let id = st.next_id;
            st.next_id += 1;
            st.pending.push_back(Reservation {
                id,
                start,
                end,
                dropped: false,
            });
            (id, end)
        };
        let mut guard = Release {
            link: self,
            id,
            armed: true,
        };
        tokio::time::sleep_until(end).await;
        guard.armed = false;
    }

    /// When the transfers scheduled so far end (`None`: none yet).
    pub fn busy_until(&self) -> Option<Instant> {
        self.state.lock().free_at
    }

    /// A transfer was dropped before its end: the link is free again from
    /// where the last transfer still wanted ends.
    fn release(&self, id: u64) {
        let mut st = self.state.lock();
        let Some(r) = st.pending.iter_mut().find(|r| r.id == id) else {
            return;
        };
        r.dropped = true;
        let now = Instant::now();
        while let Some(r) = st.pending.back() {
            if !r.dropped {
                break;
            }
            let free = r.start.max(now);
            st.pending.pop_back();
            st.free_at = Some(free);
        }
    }
}

/// Gives a dropped transfer's unused link time back.
struct Release<'a> {
    link: &'a Link,
    id: u64,
    armed: bool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.link.release(self.id);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    /// Starts a 1 MB transfer on a 1 MB/s link and lets it reserve its slot.
    async fn start(link: &Arc<Link>) -> tokio::task::JoinHandle<()> {
        let l = link.clone();
        let t = tokio::spawn(async move { l.transfer(Instant::now(), MB).await });
        tokio::task::yield_now().await;
        t
    }

    async fn timed(link: &Link) -> Duration {
        let t0 = Instant::now();
        link.transfer(t0, MB).await;
        t0.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn transfers_queue_on_the_link() {
        let link = Arc::new(Link::new(MB, Duration::ZERO));
        let _a = start(&link).await;
        assert_eq!(timed(&link).await, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_transfer_gives_its_unused_time_back() {
        let link = Arc::new(Link::new(MB, Duration::ZERO));
        let a = start(&link).await;
        let b = start(&link).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Both dropped: a had used half a second of the link, b none.
        b.abort();
        a.abort();
        let _ = (a.await, b.await);
        assert_eq!(timed(&link).await, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn transfers_scheduled_behind_a_dropped_one_keep_their_time() {
        let link = Arc::new(Link::new(MB, Duration::ZERO));
        let a = start(&link).await;
        let _b = start(&link).await;
        a.abort();
        let _ = a.await;
        // b still ends at 2 s, so a new transfer ends at 3 s.
        assert_eq!(timed(&link).await, Duration::from_secs(3));
    }
}
