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

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::format::{EncodedChunk, HEADER_LEN};
use super::key::ChunkKey;
use super::lru::Lru;
use super::store::{Counters, KvStore, StoreError, StoreStats, Tier};
use super::telemetry;

pub struct DiskStore {
    root: PathBuf,
    tmp: PathBuf,
    index: Mutex<Lru<()>>,
    sync_writes: bool,
    io: Arc<Semaphore>,
    counters: Counters,
    seq: AtomicU64,
    _lock: File,
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
            sync_writes,
            io: Arc::new(Semaphore::new(max_concurrent_io.max(1))),
            counters: Counters::new("disk"),
            seq: AtomicU64::new(0),
            _lock: lock,
        };
        store.rebuild()?;
        Ok(store)
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
                match index.insert(*key, (), *len) {
                    Ok(out) => evicted.extend(out.into_iter().map(|(k, _)| k)),
                    Err(()) => evicted.push(*key),
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
            if len > index.capacity() {
                let capacity = index.capacity();
                drop(index);
                self.counters.dropped();
                return Err(StoreError::TooLarge {
                    store: "disk",
                    bytes: len,
                    capacity,
                });
            }
            index.make_room(len)
        };
        let victim_paths: Vec<PathBuf> = victims.iter().map(|(k, _)| self.path_of(k)).collect();
        let path = self.path_of(&key);
        let tmp = self.tmp.join(format!(
            "{key}.{}.{}.tmp",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let sync = self.sync_writes;
        let written = self
            .blocking(move || {
                for p in victim_paths {
                    let _ = std::fs::remove_file(p);
                }
                write_atomically(&tmp, &path, chunk.bytes(), sync)
            })
            .await
            .and_then(|r| r);
        if !victims.is_empty() {
            self.counters.evicted(victims.len());
        }
        if let Err(e) = written {
            self.counters.error();
            return Err(e);
        }
        let (late, stored) = {
            let mut index = self.index.lock();
            let late = index.insert(key, (), len).unwrap_or_default();
            (late, index.bytes())
        };
        // Concurrent puts may have used the room this one made.
        if !late.is_empty() {
            self.counters.evicted(late.len());
            let paths: Vec<PathBuf> = late.iter().map(|(k, _)| self.path_of(k)).collect();
            let _ = self
                .blocking(move || {
                    for p in paths {
                        let _ = std::fs::remove_file(p);
                    }
                })
                .await;
        }
        self.counters.written(len as usize);
        telemetry::stored_bytes("disk", stored);
        Ok(())
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
