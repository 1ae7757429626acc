//! The disk store on a full file system: a stand-in [`Space`] plays a
//! small disk (no root, no tmpfs needed). Writes the disk refuses for space
//! evict the oldest chunks and are retried, so the newest chunks are
//! stored; the capacity is capped at what the disk holds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::kv_support::prompt;
use cake_engine::kv::{ChunkKey, Codec, DiskStore, KvStore, Space, StoreError, Tier};

/// A disk of `size` bytes holding the store's chunk files (and, set
/// through `other`, files of someone else).
struct SmallDisk {
    size: u64,
    other: AtomicU64,
    refused: AtomicU64,
}

/// Bytes of chunk files under `dir`. The store renames and deletes files
/// while this walks, so an entry (or folder) gone meanwhile counts as 0.
fn used(dir: &Path) -> u64 {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            n += used(&e.path());
        } else if e.path().extension().is_some_and(|x| x == "kv") {
            n += m.len();
        }
    }
    n
}

impl SmallDisk {
    fn new(size: u64) -> Arc<SmallDisk> {
        Arc::new(SmallDisk {
            size,
            other: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    fn taken(&self, root: &Path) -> u64 {
        used(root) + self.other.load(Ordering::SeqCst)
    }
}

impl Space for SmallDisk {
    fn free_bytes(&self, root: &Path) -> std::io::Result<u64> {
        Ok(self.size.saturating_sub(self.taken(root)))
    }

    fn before_write(&self, root: &Path, bytes: u64) -> std::io::Result<()> {
        if self.taken(root) + bytes > self.size {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        Ok(())
    }
}

async fn present(store: &DiskStore, keys: &[ChunkKey]) -> Vec<bool> {
    store
        .lookup(keys)
        .await
        .into_iter()
        .map(|t| t == Some(Tier::Disk))
        .collect()
}

#[tokio::test]
async fn capacity_is_capped_at_what_the_disk_holds() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = prompt(1, 8, Codec::F32);
    let size = chunks[0].1.len() as u64;
    let disk = SmallDisk::new(3 * size);
    let store = DiskStore::open_with_space(dir.path(), 100 * size, false, 4, disk.clone()).unwrap();
    assert_eq!(store.stats().capacity_bytes, 3 * size);
    for (_, enc, _) in &chunks {
        store.put(enc.clone()).await.unwrap();
    }
    // The disk never refused a write: the cap kept the store within it.
    assert_eq!(disk.refused.load(Ordering::SeqCst), 0);
    let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
    let p = present(&store, &keys).await;
    assert_eq!(p, [false, false, false, false, false, true, true, true]);
}

#[tokio::test]
async fn a_full_disk_evicts_the_oldest_and_stores_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = prompt(2, 10, Codec::F32);
    let size = chunks[0].1.len() as u64;
    let disk = SmallDisk::new(6 * size);
    let store = DiskStore::open_with_space(dir.path(), 6 * size, false, 4, disk.clone()).unwrap();
    for (_, enc, _) in &chunks[..4] {
        store.put(enc.clone()).await.unwrap();
    }
    // Someone else fills the disk: room for no more chunk.
    disk.other.store(2 * size, Ordering::SeqCst);
    for (_, enc, _) in &chunks[4..] {
        store.put(enc.clone()).await.unwrap();
    }
    assert!(disk.refused.load(Ordering::SeqCst) >= 1, "the disk refused");
    let s = store.stats();
    assert_eq!(s.capacity_bytes, 4 * size, "lowered to what the disk holds");
    assert_eq!(s.errors, 0, "every refused write succeeded on its retry");
    let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
    let p = present(&store, &keys).await;
    assert_eq!(
        p,
        [
            false, false, false, false, false, false, true, true, true, true
        ],
        "the newest chunks are stored"
    );
    for (k, _, _) in &chunks[6..] {
        assert!(store.get(*k).await.is_some());
    }
}

#[tokio::test]
async fn concurrent_writes_stay_within_the_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = prompt(3, 24, Codec::F32);
    let size = chunks[0].1.len() as u64;
    let disk = SmallDisk::new(4 * size);
    let store =
        Arc::new(DiskStore::open_with_space(dir.path(), 4 * size, false, 8, disk.clone()).unwrap());
    let puts = chunks.iter().map(|(_, enc, _)| {
        let (s, e) = (store.clone(), enc.clone());
        tokio::spawn(async move { s.put(e).await })
    });
    let mut stored = 0;
    for p in futures::future::join_all(puts).await {
        match p.unwrap() {
            Ok(()) => stored += 1,
            // The capacity was all in flight: that chunk is not stored.
            Err(StoreError::Busy { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(stored >= 4, "{stored}");
    assert_eq!(
        disk.refused.load(Ordering::SeqCst),
        0,
        "writes in flight are reserved before they start"
    );
    assert!(store.stats().stored_bytes <= 4 * size);
}
