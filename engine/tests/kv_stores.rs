//! The memory, disk, tiered and throttled stores, and `build_store`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::kv_support::{CHUNK_TOKENS, LAYOUT, context, prompt};
use cake_engine::kv::{
    ChunkKey, Codec, DiskStore, EncodedChunk, KvConfig, KvStore, Link, MemoryStore, StoreError,
    StoreStats, ThrottledStore, Tier, TieredStore, build_store, load_chunk,
};
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::time::Instant;

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn chunk_files(dir: &Path) -> usize {
    files_under(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "kv"))
        .count()
}

#[tokio::test]
async fn memory_store_is_lru_within_its_capacity() {
    let chunks = prompt(1, 4, Codec::F32);
    let size = chunks[0].1.len() as u64 + 256;
    let store = MemoryStore::new(3 * size);
    for (_, enc, _) in &chunks[..3] {
        store.put(enc.clone()).await.unwrap();
    }
    // Touch chunk 0 so chunk 1 is the least recently used.
    assert!(store.get(chunks[0].0).await.is_some());
    store.put(chunks[3].1.clone()).await.unwrap();
    let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
    let found = store.lookup(&keys).await;
    assert_eq!(
        found,
        vec![
            Some(Tier::Memory),
            None,
            Some(Tier::Memory),
            Some(Tier::Memory)
        ]
    );
    let s = store.stats();
    assert_eq!((s.evictions, s.entries, s.hits), (1, 3, 1));
    assert!(s.stored_bytes <= s.capacity_bytes);
    // Already stored: skipped, not an error.
    store.put(chunks[3].1.clone()).await.unwrap();
    assert_eq!(store.stats().skipped_puts, 1);
    // Larger than the whole capacity: refused.
    let tiny = MemoryStore::new(10);
    assert!(matches!(
        tiny.put(chunks[0].1.clone()).await,
        Err(StoreError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn a_chunk_round_trips_through_load_chunk_and_wrong_expectations_are_misses() {
    let chunks = prompt(2, 2, Codec::Bf16);
    let store = MemoryStore::new(1 << 20);
    for (_, enc, _) in &chunks {
        store.put(enc.clone()).await.unwrap();
    }
    let ctx = context(Codec::Bf16);
    let got = load_chunk(&store, chunks[1].0, &ctx, 1).await.unwrap();
    assert_eq!(got, chunks[1].2);
    assert_eq!(got.tokens, CHUNK_TOKENS as usize);
    // Asked as the wrong index (a reader bug or a forged chunk): a miss,
    // and the chunk is gone.
    assert!(load_chunk(&store, chunks[0].0, &ctx, 5).await.is_none());
    assert_eq!(store.lookup(&[chunks[0].0]).await, vec![None]);
}

#[tokio::test]
async fn disk_store_survives_a_restart_and_cleans_up_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = prompt(3, 3, Codec::F16);
    {
        let store = DiskStore::open(dir.path(), 1 << 20, false, 4).unwrap();
        for (_, enc, _) in &chunks {
            store.put(enc.clone()).await.unwrap();
        }
        // A second process on the same folder is refused.
        assert!(DiskStore::open(dir.path(), 1 << 20, false, 4).is_err());
    }
    // A crash mid-write leaves temporary files behind.
    std::fs::write(dir.path().join("tmp").join("abc.1.2.tmp"), b"half a chunk").unwrap();
    let store = DiskStore::open(dir.path(), 1 << 20, false, 4).unwrap();
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
    assert_eq!(store.lookup(&keys).await, vec![Some(Tier::Disk); 3]);
    let got = store.get_many(&keys).await;
    for ((_, enc, _), g) in chunks.iter().zip(got) {
        assert_eq!(g.as_ref(), Some(enc));
    }
    assert_eq!(store.stats().entries, 3);
    store.delete(keys[0]).await.unwrap();
    assert_eq!(chunk_files(dir.path()), 2);
    assert!(store.get(keys[0]).await.is_none());
}

#[tokio::test]
async fn disk_store_deletes_and_counts_a_corrupt_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = prompt(4, 2, Codec::F32);
    let store = DiskStore::open(dir.path(), 1 << 20, true, 4).unwrap();
    for (_, enc, _) in &chunks {
        store.put(enc.clone()).await.unwrap();
    }
    let path = store.path_of(&chunks[0].0);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    assert!(store.get(chunks[0].0).await.is_none());
    assert!(!path.exists());
    let s = store.stats();
    assert_eq!((s.corrupt, s.misses, s.entries), (1, 1, 1));
    // A truncated file (torn write) is corrupt too.
    let path = store.path_of(&chunks[1].0);
    std::fs::write(&path, &std::fs::read(&path).unwrap()[..200]).unwrap();
    assert!(store.get(chunks[1].0).await.is_none());
    assert_eq!(store.stats().corrupt, 2);
}

#[tokio::test]
async fn disk_store_evicts_to_its_capacity_now_and_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = prompt(5, 5, Codec::F32);
    let size = chunks[0].1.len() as u64;
    {
        let store = DiskStore::open(dir.path(), 3 * size, false, 4).unwrap();
        for (_, enc, _) in &chunks {
            store.put(enc.clone()).await.unwrap();
        }
        let s = store.stats();
        assert_eq!((s.entries, s.evictions), (3, 2));
        assert!(s.stored_bytes <= 3 * size);
        assert_eq!(chunk_files(dir.path()), 3);
        // The newest survive.
        assert!(store.get(chunks[4].0).await.is_some());
        assert!(store.get(chunks[0].0).await.is_none());
    }
    // Reopened smaller: the oldest files go.
    let store = DiskStore::open(dir.path(), 2 * size, false, 4).unwrap();
    assert_eq!(store.stats().entries, 2);
    assert_eq!(chunk_files(dir.path()), 2);
}

#[tokio::test]
async fn tiered_store_promotes_hits_and_writes_behind_once() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(MemoryStore::new(1 << 20));
    let disk = Arc::new(DiskStore::open(dir.path(), 1 << 20, false, 4).unwrap());
    let tiered = TieredStore::new(vec![memory.clone(), disk.clone()], 1 << 20);
    let chunks = prompt(6, 3, Codec::F32);
    let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();

    // Chunk 0 only on disk, chunk 1 through the tiered store, chunk 2 nowhere.
    disk.put(chunks[0].1.clone()).await.unwrap();
    tiered.put(chunks[1].1.clone()).await.unwrap();
    tiered.put(chunks[1].1.clone()).await.unwrap();
    tiered.flush().await;
    assert_eq!(
        tiered.lookup(&keys).await,
        vec![Some(Tier::Disk), Some(Tier::Memory), None]
    );
    assert_eq!(disk.stats().puts, 2, "chunk 1 is written to disk once");

    let got = tiered.get_many(&keys).await;
    assert_eq!(got[0].as_ref(), Some(&chunks[0].1));
    assert_eq!(got[1].as_ref(), Some(&chunks[1].1));
    assert!(got[2].is_none());
    tiered.flush().await;
    // Promoted into memory.
    assert_eq!(tiered.lookup(&keys[..1]).await, vec![Some(Tier::Memory)]);
    let s = tiered.stats();
    assert_eq!((s.hits, s.misses, s.in_flight_bytes), (2, 1, 0));
    assert_eq!(s.inner.len(), 2);

    tiered.delete(keys[0]).await.unwrap();
    assert_eq!(tiered.lookup(&keys[..1]).await, vec![None]);
}

#[tokio::test]
async fn tiered_store_drops_corrupt_chunks_from_slower_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(MemoryStore::new(1 << 20));
    let disk = Arc::new(DiskStore::open(dir.path(), 1 << 20, false, 4).unwrap());
    let tiered = TieredStore::new(vec![memory.clone(), disk.clone()], 1 << 20);
    let chunks = prompt(7, 1, Codec::F32);
    disk.put(chunks[0].1.clone()).await.unwrap();
    let path = disk.path_of(&chunks[0].0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[300] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert!(tiered.get(chunks[0].0).await.is_none());
    tiered.flush().await;
    assert_eq!(tiered.lookup(&[chunks[0].0]).await, vec![None]);
    assert_eq!(disk.stats().corrupt, 1);
    assert_eq!(memory.stats().entries, 0, "nothing corrupt is promoted");
}

/// A store whose puts wait for a permit: lets a test hold writes in flight.
struct GatedStore {
    inner: MemoryStore,
    gate: Semaphore,
}

impl KvStore for GatedStore {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn lookup<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<Tier>>> {
        self.inner.lookup(keys)
    }
    fn get(&self, key: ChunkKey) -> BoxFuture<'_, Option<EncodedChunk>> {
        self.inner.get(key)
    }
    fn put(&self, chunk: EncodedChunk) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let _p = self
                .gate
                .acquire()
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?;
            self.inner.put(chunk).await
        })
    }
    fn delete(&self, key: ChunkKey) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.delete(key)
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

#[tokio::test]
async fn write_behind_is_bounded_and_never_blocks_the_caller() {
    let chunks = prompt(8, 6, Codec::F32);
    let size = chunks[0].1.len() as u64;
    let gated = Arc::new(GatedStore {
        inner: MemoryStore::new(1 << 20),
        gate: Semaphore::new(0),
    });
    let tiered = TieredStore::new(vec![gated.clone()], 2 * size);
    for (_, enc, _) in &chunks {
        // Returns at once although nothing can be written yet.
        tokio::time::timeout(Duration::from_secs(1), tiered.put(enc.clone()))
            .await
            .unwrap()
            .unwrap();
    }
    let s = tiered.stats();
    assert_eq!(s.in_flight_bytes, 2 * size);
    assert_eq!(s.dropped_puts, 4);
    gated.gate.add_permits(100);
    tokio::time::timeout(Duration::from_secs(5), tiered.flush())
        .await
        .unwrap();
    assert_eq!(tiered.stats().in_flight_bytes, 0);
    assert_eq!(gated.stats().entries, 2);
}

/// A chunk is visible the moment it is put: while its write is still held
/// behind the request, lookups report it and reads return it; one the
/// write-behind had no room for is not reported.
#[tokio::test]
async fn chunks_being_written_behind_answer_lookups_and_reads() {
    let chunks = prompt(9, 3, Codec::F32);
    let size = chunks[0].1.len() as u64;
    let gated = Arc::new(GatedStore {
        inner: MemoryStore::new(1 << 20),
        gate: Semaphore::new(0),
    });
    let tiered = TieredStore::new(vec![gated.clone()], 2 * size);
    let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
    for (_, enc, _) in &chunks {
        tiered.put(enc.clone()).await.unwrap();
    }
    assert_eq!(gated.stats().entries, 0, "nothing has landed yet");
    assert_eq!(
        tiered.lookup(&keys).await,
        vec![Some(Tier::Memory), Some(Tier::Memory), None]
    );
    assert_eq!(tiered.get(keys[0]).await.as_ref(), Some(&chunks[0].1));
    let got = tiered.get_many(&keys).await;
    assert_eq!(got[1].as_ref(), Some(&chunks[1].1));
    assert!(got[2].is_none());
    gated.gate.add_permits(100);
    tokio::time::timeout(Duration::from_secs(5), tiered.flush())
        .await
        .unwrap();
    // Landed: now the tier itself answers.
    assert_eq!(gated.stats().entries, 2);
    assert_eq!(
        tiered.lookup(&keys[..2]).await,
        vec![Some(Tier::Memory), Some(Tier::Memory)]
    );
    assert_eq!(tiered.get(keys[1]).await.as_ref(), Some(&chunks[1].1));
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_capacity_under_sustained_writes() {
    // 1 MiB chunks (the `small` model's 256-token f32 chunk), 320 MiB
    // written through a 16 MiB memory tier with an 8 MiB write-behind.
    let layout = cake_engine::KvLayout {
        layers: 4,
        kv_heads: 2,
        head_dim: 64,
    };
    let ns = cake_engine::kv::Namespace::new([9; 32], 256, Codec::F32, "soak");
    let ctx = cake_engine::kv::ChunkContext::new(&ns, layout);
    let kv = cake_engine::KvChunk::zeros(layout, 256);
    let tokens: Vec<u32> = (0..320 * 256).collect();
    let keys = cake_engine::kv::chunk_keys(&ns, &tokens);
    let capacity = 16 << 20;
    let in_flight = 8 << 20;
    let memory = Arc::new(MemoryStore::new(capacity));
    let tiered = Arc::new(TieredStore::new(vec![memory.clone()], in_flight));
    let before = rss_bytes();
    let mut peak = 0;
    for (i, key) in keys.iter().enumerate() {
        let enc = EncodedChunk::encode(*key, &ctx, i as u32, &kv).unwrap();
        tiered.put(enc).await.unwrap();
        let s = tiered.stats();
        assert!(s.in_flight_bytes <= in_flight, "{s:?}");
        assert!(s.inner[0].stored_bytes <= capacity, "{s:?}");
        if i % 16 == 0 {
            tokio::task::yield_now().await;
            peak = peak.max(rss_bytes());
        }
    }
    tiered.flush().await;
    let s = memory.stats();
    assert!(s.stored_bytes <= capacity);
    assert!(s.evictions > 0);
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 128 << 20,
        "RSS grew by {} MiB while writing 320 MiB",
        grown >> 20
    );
}

#[tokio::test(start_paused = true)]
async fn throttle_shares_one_link_between_readers() {
    let chunks = prompt(9, 2, Codec::F32);
    let size = chunks[0].1.len() as u64;
    let memory = Arc::new(MemoryStore::new(1 << 20));
    for (_, enc, _) in &chunks {
        memory.put(enc.clone()).await.unwrap();
    }
    // One chunk per second, 10 ms latency.
    let link = Arc::new(Link::new(size, Duration::from_millis(10)));
    let store = Arc::new(ThrottledStore::new(memory, link, false));

    let t0 = Instant::now();
    assert!(store.get(chunks[0].0).await.is_some());
    assert_eq!(t0.elapsed(), Duration::from_millis(1010));

    let t0 = Instant::now();
    let (a, b) = tokio::join!(
        async {
            store.get(chunks[0].0).await;
            t0.elapsed()
        },
        async {
            store.get(chunks[1].0).await;
            t0.elapsed()
        }
    );
    let (first, second) = (a.min(b), a.max(b));
    assert_eq!(first, Duration::from_millis(1010));
    assert_eq!(
        second,
        Duration::from_millis(2010),
        "the second reader waits for the link"
    );

    // Lookups and misses pay the latency only.
    let t0 = Instant::now();
    store.lookup(&[chunks[0].0]).await;
    assert!(store.get(ChunkKey([0; 32])).await.is_none());
    assert_eq!(t0.elapsed(), Duration::from_millis(20));
}

#[tokio::test]
async fn build_store_from_defaults_keeps_chunks_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = KvConfig::default();
    let chunks = prompt(10, 3, Codec::F32);
    let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
    {
        let store = build_store(&cfg, dir.path()).unwrap();
        for (_, enc, _) in &chunks {
            store.put(enc.clone()).await.unwrap();
        }
        store.flush().await;
        assert_eq!(store.lookup(&keys).await, vec![Some(Tier::Memory); 3]);
    }
    assert_eq!(chunk_files(&dir.path().join("kv")), 3);
    let store = build_store(&cfg, dir.path()).unwrap();
    assert_eq!(store.lookup(&keys).await, vec![Some(Tier::Disk); 3]);
    let ctx = context(Codec::F32);
    for (i, (key, _, kv)) in chunks.iter().enumerate() {
        assert_eq!(
            load_chunk(store.as_ref(), *key, &ctx, i as u32)
                .await
                .as_ref(),
            Some(kv)
        );
    }

    let mut throttled = cfg.clone();
    throttled.disk.path = dir.path().join("other");
    throttled.throttle.enabled = true;
    throttled.throttle.latency_us = 1;
    let store = build_store(&throttled, dir.path()).unwrap();
    assert_eq!(store.name(), "throttle");
    assert_eq!(LAYOUT.layers, 2);
}
