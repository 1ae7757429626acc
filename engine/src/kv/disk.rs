//! `disk`: one file per chunk under a folder, bounded in bytes, least
//! recently used evicted first.
//!
//! Layout: `ROOT/ab/abcd….kv` (the first two hex digits fan the files out
//! over 256 folders), temporary files in `ROOT/tmp/`, and `ROOT/LOCK`,
//! held with an exclusive `flock` while the store is open so two processes
//! never share (and clean up under) one folder. A chunk is written to a
//! temporary file and renamed into place, so a crash never leaves half a
//! chunk under a chunk's name; with `sync_writes` off, a power loss can
//! still leave a torn file behind a rename, which the checksum catches on
//! read (the chunk is then deleted and recomputed).
//!
//! At start the index is rebuilt from the folder (recency from the files'
//! modification times, oldest evicted first) and stray temporary files are
//! removed. After that the index is the truth for lookups: no file system
//! call is made for a chunk the index does not hold.
//!
//! Full disks: the capacity is capped at start to what the file system
//! holds (its free space plus the cache's own files). Bytes of writes in
//! flight are reserved before they start, so concurrent writes never
//! overrun the capacity together. A write the file system still refuses
//! for space (ENOSPC, EDQUOT: another tenant of the disk, a quota) lowers
//! the capacity to what the file system now holds, evicts least recently
//! used chunks to make room, and is retried once — so the newest chunks
//! keep being stored and the oldest go.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::format::{EncodedChunk, HEADER_LEN};
use super::key::ChunkKey;
use super::lru::Lru;
use super::store::{Counters, KvStore, StoreError, StoreStats, Tier};
use super::telemetry;

/// The file system under a disk store, as far as space goes.
/// [`FsSpace`] asks the real one; tests stand in a small one.
pub trait Space: Send + Sync {
    /// Bytes that may still be written under `root`.
    fn free_bytes(&self, root: &Path) -> std::io::Result<u64>;

    /// Called just before `bytes` of a chunk are written under `root`; an
    /// error is returned as the write's own would be.
    fn before_write(&self, _root: &Path, _bytes: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// The real file system: free space from `statvfs` (what an unprivileged
/// process may use).
pub struct FsSpace;

impl Space for FsSpace {
    fn free_bytes(&self, root: &Path) -> std::io::Result<u64> {
        let v = rustix::fs::statvfs(root)?;
        Ok(v.f_bavail.saturating_mul(v.f_frsize))
    }
}

/// At most one "disk full" warning this often; the rest are counted.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub struct DiskStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Chunk keys and their bytes.
    index: Mutex<Lru<u64>>,
    /// Bytes on the disk or on their way that `index` does not count:
    /// writes in flight and evicted files not yet removed. Changed only
    /// with `index` locked.
    reserved: AtomicU64,
    space: Arc<dyn Space>,
    /// When the last "disk full" warning was logged, and how many full
    /// writes went unlogged since.
    full_warned: Mutex<(Option<Instant>, u64)>,
    sync_writes: bool,
    io: Arc<Semaphore>,
    counters: Counters,
    seq: AtomicU64,
    _lock: File,
}

fn is_no_space(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. }
        if matches!(source.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

impl DiskStore {
    /// Opens (creating if needed) the store in `root` and rebuilds its
    /// index. Blocking: call at start-up.
    pub fn open(
        root: &Path,
        capacity_bytes: u64,
        sync_writes: bool,
        max_concurrent_io: usize,
    ) -> Result<DiskStore, StoreError> {
        DiskStore::open_with_space(
            root,
            capacity_bytes,
            sync_writes,
            max_concurrent_io,
            Arc::new(FsSpace),
        )
    }

    /// [`DiskStore::open`] over `space` instead of the real file system's
    /// free space.
    pub fn open_with_space(
        root: &Path,
        capacity_bytes: u64,
        sync_writes: bool,
        max_concurrent_io: usize,
        space: Arc<dyn Space>,
    ) -> Result<DiskStore, StoreError> {
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let lock_path = root.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| StoreError::Io {
                op: "lock (is another cake process using this folder?)",
                path: lock_path.clone(),
                source: e.into(),
            },
        )?;
        let store = DiskStore {
            root: root.to_path_buf(),
            tmp,
            index: Mutex::new(Lru::new(capacity_bytes)),
            reserved: AtomicU64::new(0),
            space,
            full_warned: Mutex::new((None, 0)),
            sync_writes,
            io: Arc::new(Semaphore::new(max_concurrent_io.max(1))),
            counters: Counters::new("disk"),
            seq: AtomicU64::new(0),
            _lock: lock,
        };
        store.rebuild()?;
        store.cap_at_file_system();
        Ok(store)
    }

    /// Caps the capacity at what the file system holds: its free space
    /// plus the chunks already stored.
    fn cap_at_file_system(&self) {
        let free = match self.space.free_bytes(&self.root) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(root = %self.root.display(), error = %e, "cannot read the KV folder's free space; keeping kv.disk.capacity_bytes");
                return;
            }
        };
        let mut index = self.index.lock();
        let configured = index.capacity();
        let holds = index.bytes().saturating_add(free);
        if holds < configured {
            tracing::warn!(
                root = %self.root.display(),
                capacity_bytes = configured,
                file_system_holds = holds,
                "kv.disk.capacity_bytes is more than the KV folder's file system holds (free space plus the stored chunks); capped at that"
            );
            index.set_capacity(holds);
        }
        telemetry::capacity_bytes("disk", index.capacity());
    }

    /// A write was refused for space: the capacity becomes what the file
    /// system holds now, and room is made for `len` more bytes (beyond
    /// the other writes in flight). Returns the chunks evicted.
    fn shrink_to_file_system(&self, len: u64) -> Vec<(ChunkKey, u64)> {
        telemetry::disk_full();
        let free = self.space.free_bytes(&self.root).unwrap_or(0);
        let mut index = self.index.lock();
        let before = index.capacity();
        let holds = index.bytes().saturating_add(free).min(before);
        let mut evicted = index.set_capacity(holds);
        let others = self.reserved.load(Ordering::Relaxed).saturating_sub(len);
        evicted.extend(index.make_room(len.saturating_add(others)));
        self.reserve_removal(&evicted);
        let after = index.capacity();
        drop(index);
        telemetry::capacity_bytes("disk", after);
        self.warn_full(before, after, evicted.len());
        evicted
    }

    /// Evicted files count as taken until they are removed. Call with
    /// `index` locked.
    fn reserve_removal(&self, evicted: &[(ChunkKey, u64)]) {
        let bytes: u64 = evicted.iter().map(|(_, b)| b).sum();
        self.reserved.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Removes evicted chunks' files, then gives their bytes back.
    async fn remove_evicted(&self, evicted: &[(ChunkKey, u64)]) {
        if evicted.is_empty() {
            return;
        }
        let paths: Vec<PathBuf> = evicted.iter().map(|(k, _)| self.path_of(k)).collect();
        let _ = self
            .blocking(move || {
                for p in paths {
                    let _ = std::fs::remove_file(p);
                }
            })
            .await;
        let bytes: u64 = evicted.iter().map(|(_, b)| b).sum();
        let _index = self.index.lock();
        self.reserved.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn warn_full(&self, before: u64, after: u64, evicted: usize) {
        let mut w = self.full_warned.lock();
        let now = Instant::now();
        if w.0.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            w.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut w.1);
        w.0 = Some(now);
        drop(w);
        tracing::warn!(
            root = %self.root.display(),
            capacity_before = before,
            capacity_now = after,
            evicted,
            unlogged_since_last = unlogged,
            "KV disk full: capacity lowered to what the file system holds; oldest chunks evicted"
        );
    }

    /// Where the chunk under `key` lives (whether or not it is stored).
    pub fn path_of(&self, key: &ChunkKey) -> PathBuf {
        let hex = key.to_hex();
        self.root.join(&hex[..2]).join(format!("{hex}.kv"))
    }

    fn rebuild(&self) -> Result<(), StoreError> {
        let mut stray = 0usize;
        for entry in std::fs::read_dir(&self.tmp)
            .map_err(io_err("list", &self.tmp))?
            .flatten()
        {
            if std::fs::remove_file(entry.path()).is_ok() {
                stray += 1;
            }
        }
        let mut found: Vec<(SystemTime, ChunkKey, u64)> = Vec::new();
        for dir in std::fs::read_dir(&self.root)
            .map_err(io_err("list", &self.root))?
            .flatten()
        {
            let name = dir.file_name();
            let Some(prefix) = name.to_str().filter(|n| n.len() == 2) else {
                continue;
            };
            let Ok(files) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                let fname = file.file_name();
                let Some(fname) = fname.to_str() else {
                    continue;
                };
                if fname.ends_with(".tmp") {
                    if std::fs::remove_file(&path).is_ok() {
                        stray += 1;
                    }
                    continue;
                }
                let Some(key) = fname
                    .strip_suffix(".kv")
                    .filter(|hex| hex.starts_with(prefix))
                    .and_then(ChunkKey::from_hex)
                else {
                    continue;
                };
                let Ok(meta) = file.metadata() else { continue };
                if meta.len() < HEADER_LEN as u64 {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                found.push((
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    key,
                    meta.len(),
                ));
            }
        }
        found.sort();
        let mut evicted = Vec::new();
        {
            let mut index = self.index.lock();
            for (_, key, len) in &found {
                match index.insert(*key, *len, *len) {
                    Ok(out) => evicted.extend(out.into_iter().map(|(k, _)| k)),
                    Err(_) => evicted.push(*key),
                }
            }
        }
        for key in &evicted {
            let _ = std::fs::remove_file(self.path_of(key));
        }
        if !evicted.is_empty() {
            self.counters.evicted(evicted.len());
        }
        let (entries, bytes) = {
            let index = self.index.lock();
            (index.len(), index.bytes())
        };
        telemetry::stored_bytes("disk", bytes);
        tracing::info!(
            root = %self.root.display(),
            entries,
            bytes,
            stray_removed = stray,
            evicted = evicted.len(),
            "disk KV store opened"
        );
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self
            .io
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Task(e.to_string()))
    }

    async fn get_now(&self, key: ChunkKey) -> Option<EncodedChunk> {
        if !self.index.lock().contains(&key) {
            self.counters.miss();
            return None;
        }
        let path = self.path_of(&key);
        let read = self
            .blocking(move || {
                let bytes = std::fs::read(&path)?;
                // Checked on the blocking thread, while the bytes are in cache.
                Ok::<_, std::io::Error>(EncodedChunk::parse(&key, Bytes::from(bytes)))
            })
            .await;
        match read {
            Ok(Ok(Ok(chunk))) => {
                self.index.lock().get(&key);
                self.counters.hit(chunk.len());
                Some(chunk)
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(%key, error = %e, "corrupt KV chunk on disk; deleting it");
                self.forget(key).await;
                self.counters.corrupt();
                None
            }
            Ok(Err(e)) if e.kind() == ErrorKind::NotFound => {
                self.index.lock().remove(&key);
                self.counters.miss();
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(%key, error = %e, "reading a KV chunk failed");
                self.counters.error();
                self.counters.miss();
                None
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "reading a KV chunk failed");
                self.counters.error();
                self.counters.miss();
                None
            }
        }
    }

    /// Drops `key` from the index and its file from the folder.
    async fn forget(&self, key: ChunkKey) {
        self.index.lock().remove(&key);
        let path = self.path_of(&key);
        let _ = self.blocking(move || std::fs::remove_file(path)).await;
    }

    async fn put_now(&self, chunk: EncodedChunk) -> Result<(), StoreError> {
        let key = chunk.key();
        let len = chunk.len() as u64;
        let victims = {
            let mut index = self.index.lock();
            if index.get(&key).is_some() {
                drop(index);
                self.counters.skipped();
                return Ok(());
            }
            let capacity = index.capacity();
            if len > capacity {
                drop(index);
                self.counters.dropped();
                return Err(StoreError::TooLarge {
                    store: "disk",
                    bytes: len,
                    capacity,
                });
            }
            // Room for this write beside every other one in flight (and
            // evicted files not yet removed).
            let reserved = self.reserved.load(Ordering::Relaxed);
            let victims = index.make_room(len.saturating_add(reserved));
            self.reserve_removal(&victims);
            let fits = index.bytes() + reserved + len <= capacity;
            if fits {
                self.reserved.fetch_add(len, Ordering::Relaxed);
            }
            (victims, fits.then_some(()).ok_or(capacity))
        };
        let (victims, fits) = victims;
        if let Err(capacity) = fits {
            self.remove_evicted(&victims).await;
            self.counters.evicted(victims.len());
            self.counters.dropped();
            return Err(StoreError::Busy {
                store: "disk",
                capacity,
            });
        }
        self.remove_evicted(&victims).await;
        self.counters.evicted(victims.len());
        let mut written = self.write(&chunk).await;
        if written.as_ref().is_err_and(is_no_space) {
            let victims = self.shrink_to_file_system(len);
            self.remove_evicted(&victims).await;
            self.counters.evicted(victims.len());
            written = self.write(&chunk).await;
        }
        if let Err(e) = written {
            let _index = self.index.lock();
            self.reserved.fetch_sub(len, Ordering::Relaxed);
            self.counters.error();
            return Err(e);
        }
        let (late, stored) = {
            let mut index = self.index.lock();
            self.reserved.fetch_sub(len, Ordering::Relaxed);
            let late = index.insert(key, len, len).unwrap_or_default();
            self.reserve_removal(&late);
            (late, index.bytes())
        };
        // A capacity lowered meanwhile may have left no room for others.
        self.remove_evicted(&late).await;
        self.counters.evicted(late.len());
        self.counters.written(len as usize);
        telemetry::stored_bytes("disk", stored);
        Ok(())
    }

    /// Writes `chunk` in place atomically.
    async fn write(&self, chunk: &EncodedChunk) -> Result<(), StoreError> {
        let key = chunk.key();
        let path = self.path_of(&key);
        let tmp = self.tmp.join(format!(
            "{key}.{}.{}.tmp",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let sync = self.sync_writes;
        let space = self.space.clone();
        let root = self.root.clone();
        let chunk = chunk.clone();
        self.blocking(move || {
            space
                .before_write(&root, chunk.len() as u64)
                .map_err(io_err("write", &tmp))?;
            write_atomically(&tmp, &path, chunk.bytes(), sync)
        })
        .await
        .and_then(|r| r)
    }
}

fn write_atomically(tmp: &Path, path: &Path, bytes: &[u8], sync: bool) -> Result<(), StoreError> {
    let result = (|| {
        let mut f = File::create(tmp).map_err(io_err("create", tmp))?;
        f.write_all(bytes).map_err(io_err("write", tmp))?;
        if sync {
            f.sync_all().map_err(io_err("sync", tmp))?;
        }
        drop(f);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        std::fs::rename(tmp, path).map_err(io_err("rename", path))?;
        if sync {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("sync", dir))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

impl KvStore for DiskStore {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn lookup<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<Tier>>> {
        self.counters.lookups(keys.len());
        let index = self.index.lock();
        let found = keys
            .iter()
            .map(|k| index.contains(k).then_some(Tier::Disk))
            .collect();
        drop(index);
        Box::pin(async move { found })
    }

    fn get(&self, key: ChunkKey) -> BoxFuture<'_, Option<EncodedChunk>> {
        Box::pin(self.get_now(key))
    }

    fn put(&self, chunk: EncodedChunk) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.put_now(chunk))
    }

    fn delete(&self, key: ChunkKey) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let known = self.index.lock().remove(&key).is_some();
            let path = self.path_of(&key);
            let removed = self.blocking(move || std::fs::remove_file(path)).await?;
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &self.path_of(&key))(e)),
            }
            if known {
                self.counters.deleted();
            }
            Ok(())
        })
    }

    fn stats(&self) -> StoreStats {
        let mut s = self.counters.snapshot();
        let index = self.index.lock();
        s.entries = index.len() as u64;
        s.stored_bytes = index.bytes();
        s.capacity_bytes = index.capacity();
        s
    }
}
