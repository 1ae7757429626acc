//! The `KvStore` trait every tier implements, its statistics and errors.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use thiserror::Error;

use super::format::{ChunkContext, EncodedChunk};
use super::key::ChunkKey;
use super::telemetry;
use crate::KvChunk;

/// Where a stored chunk was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Memory,
    Disk,
    Redis,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
            Tier::Redis => "redis",
        }
    }
}

/// A store of encoded chunks by key. Object-safe: used as `Arc<dyn KvStore>`.
///
/// Reads never fail: a missing, corrupt or unreachable chunk is a miss
/// (`None`), counted and logged by the store, and a corrupt one is deleted.
/// Everything a store returns has passed [`EncodedChunk::parse`].
pub trait KvStore: Send + Sync {
    /// Short name for logs and stats: `memory`, `disk`, `redis`, `tiered`,
    /// `throttle`.
    fn name(&self) -> &'static str;

    /// Which of `keys` are stored, and where: one answer per key, in order,
    /// in one round trip per tier.
    fn lookup<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<Tier>>>;

    /// One chunk, or `None` on a miss.
    fn get(&self, key: ChunkKey) -> BoxFuture<'_, Option<EncodedChunk>>;

    /// Several chunks, one answer per key in order (pipelined where the
    /// store can).
    fn get_many<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<EncodedChunk>>> {
        Box::pin(futures::future::join_all(keys.iter().map(|k| self.get(*k))))
    }

    /// Stores a chunk under its own key. Storing a key already present is
    /// not an error (it may be skipped).
    fn put(&self, chunk: EncodedChunk) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes a chunk; a missing one is not an error.
    fn delete(&self, key: ChunkKey) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Waits until writes accepted so far have landed (write-behind stores).
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn stats(&self) -> StoreStats;
}

/// Loads chunk `index` under `key` and decodes it for `ctx`. A chunk that
/// fails the reader's checks (wrong namespace, index, shape or codec) is
/// deleted, counted as corrupt and reported as a miss.
pub async fn load_chunk(
    store: &dyn KvStore,
    key: ChunkKey,
    ctx: &ChunkContext,
    index: u32,
) -> Option<KvChunk> {
    get_checked(store, key, ctx, index)
        .await?
        .checked_decode()
        .ok()
}

/// Like [`load_chunk`], but the KV lands on `device` as the cache's
/// tensors (on a GPU: uploaded on the copy stream, bf16/f16 widened
/// there). A device failure is logged and reads as a miss too.
pub(crate) async fn load_chunk_to(
    store: &dyn KvStore,
    key: ChunkKey,
    ctx: &ChunkContext,
    index: u32,
    device: cake_kernels::Device,
) -> Option<crate::cache::DeviceChunk> {
    let chunk = get_checked(store, key, ctx, index).await?;
    match chunk.checked_to_device(device) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(%key, index, error = %e, "could not make a loaded chunk ready on the device");
            None
        }
    }
}

/// The stored chunk under `key` when it passes the reader's checks for
/// `ctx` and `index`; one that fails them is deleted and counted as
/// corrupt.
async fn get_checked(
    store: &dyn KvStore,
    key: ChunkKey,
    ctx: &ChunkContext,
    index: u32,
) -> Option<EncodedChunk> {
    let chunk = store.get(key).await?;
    if let Err(e) = chunk.check(ctx, index) {
        tracing::warn!(%key, index, error = %e, "stored KV chunk fails the reader's checks; deleting it");
        telemetry::corrupt(store.name());
        if let Err(e) = store.delete(key).await {
            tracing::debug!(%key, error = %e, "could not delete a corrupt chunk");
        }
        return None;
    }
    Some(chunk)
}

/// Errors of writes and deletes (reads turn every failure into a miss).
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis is unavailable (last failure less than {0:?} ago)")]
    Unavailable(Duration),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(
        "a chunk of {bytes} bytes does not fit the {store} store's capacity of {capacity} bytes"
    )]
    TooLarge {
        store: &'static str,
        bytes: u64,
        capacity: u64,
    },
    /// Every byte of the capacity is taken by writes in flight; the
    /// chunk is not stored.
    #[error("the {store} store's capacity of {capacity} bytes is taken by writes in flight")]
    Busy { store: &'static str, capacity: u64 },
    #[error("blocking task failed: {0}")]
    Task(String),
    #[error("the redis store must be created inside a tokio runtime")]
    NoRuntime,
}

/// A snapshot of one store's counters (and, for stores made of others,
/// theirs in `inner`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreStats {
    pub name: String,
    /// Keys asked about by `lookup`.
    pub lookups: u64,
    pub hits: u64,
    pub misses: u64,
    /// Chunks that failed their checks (deleted, and counted as misses too).
    pub corrupt: u64,
    /// Failed operations (I/O, Redis down, timeouts).
    pub errors: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub puts: u64,
    /// Puts not written because the chunk was already there (or on its way).
    pub skipped_puts: u64,
    /// Puts given up: too large, or the write-behind budget was full.
    pub dropped_puts: u64,
    pub deletes: u64,
    pub evictions: u64,
    /// Chunks held now (where the store knows).
    pub entries: u64,
    /// Bytes held now, by the store's own accounting (where it knows).
    pub stored_bytes: u64,
    /// Configured capacity in bytes (0: not bounded here).
    pub capacity_bytes: u64,
    /// Write-behind bytes accepted but not yet written.
    pub in_flight_bytes: u64,
    pub inner: Vec<StoreStats>,
}

/// Counters a store bumps; each also records the matching `cake_kv_*`
/// metric under the store's name.
#[derive(Debug)]
pub(crate) struct Counters {
    name: &'static str,
    lookups: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    puts: AtomicU64,
    skipped_puts: AtomicU64,
    dropped_puts: AtomicU64,
    deletes: AtomicU64,
    evictions: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn new(name: &'static str) -> Counters {
        Counters {
            name,
            lookups: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            skipped_puts: AtomicU64::new(0),
            dropped_puts: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    pub(crate) fn lookups(&self, n: usize) {
        bump(&self.lookups, n as u64);
    }

    pub(crate) fn hit(&self, bytes: usize) {
        bump(&self.hits, 1);
        bump(&self.bytes_read, bytes as u64);
        telemetry::hit(self.name, bytes);
    }

    pub(crate) fn miss(&self) {
        bump(&self.misses, 1);
        telemetry::miss(self.name);
    }

    /// A corrupt chunk: also a miss.
    pub(crate) fn corrupt(&self) {
        bump(&self.corrupt, 1);
        telemetry::corrupt(self.name);
        self.miss();
    }

    pub(crate) fn error(&self) {
        bump(&self.errors, 1);
        telemetry::error(self.name);
    }

    pub(crate) fn written(&self, bytes: usize) {
        bump(&self.puts, 1);
        bump(&self.bytes_written, bytes as u64);
        telemetry::written(self.name, bytes);
    }

    pub(crate) fn skipped(&self) {
        bump(&self.skipped_puts, 1);
    }

    pub(crate) fn dropped(&self) {
        bump(&self.dropped_puts, 1);
        telemetry::dropped(self.name);
    }

    pub(crate) fn deleted(&self) {
        bump(&self.deletes, 1);
    }

    pub(crate) fn evicted(&self, n: usize) {
        bump(&self.evictions, n as u64);
        telemetry::evicted(self.name, n);
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreStats {
            name: self.name.to_string(),
            lookups: g(&self.lookups),
            hits: g(&self.hits),
            misses: g(&self.misses),
            corrupt: g(&self.corrupt),
            errors: g(&self.errors),
            bytes_read: g(&self.bytes_read),
            bytes_written: g(&self.bytes_written),
            puts: g(&self.puts),
            skipped_puts: g(&self.skipped_puts),
            dropped_puts: g(&self.dropped_puts),
            deletes: g(&self.deletes),
            evictions: g(&self.evictions),
            ..StoreStats::default()
        }
    }
}
