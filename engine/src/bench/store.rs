//! `cake bench store`: load bandwidth through a KV store against a raw read
//! of the same bytes, measured in one run on the same data.
//!
//! Chunks have the `small` model's KV shape (4 layers × 2 KV heads × 64),
//! so tokens/s is what a loader of that model would get. Each round reads
//! every chunk three ways, with the same number of reads in flight:
//! - `raw`: the bytes by the plainest means for the tier — `std::fs::read`
//!   of the chunk files (on tokio's blocking pool, as the store does), a
//!   plain `GET` on a multiplexed Redis connection (on a cluster, through
//!   the `redis` crate's cluster client, which routes each), a `memcpy` of the
//!   bytes held in memory;
//! - `load`: `KvStore::get_many`, which also checks each chunk (header and
//!   xxh3 checksum);
//! - `decode`: `get`, then the loader's own path to the KV as the
//!   model's tensors (on the CPU), i.e. what the loader ends with.
//!
//! Figures are medians over rounds; the passes alternate order each round.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::common::median;
use futures::StreamExt;
use serde::Serialize;
use thiserror::Error;

use crate::kv::{
    ChunkContext, ChunkKey, Codec, DiskStore, EncodedChunk, FormatError, KvStore, LocalRedis,
    LocalRedisCluster, MemoryStore, Namespace, RedisConfig, RedisStore, StoreError, chunk_keys,
};
use crate::{KvChunk, KvLayout, Rng};

/// The `small` preset's KV layout.
pub const SMALL_LAYOUT: KvLayout = KvLayout {
    layers: 4,
    kv_heads: 2,
    head_dim: 64,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchTier {
    Memory,
    Disk,
    Redis,
}

impl BenchTier {
    pub fn as_str(self) -> &'static str {
        match self {
            BenchTier::Memory => "memory",
            BenchTier::Disk => "disk",
            BenchTier::Redis => "redis",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct StoreBench {
    pub tier: BenchTier,
    /// Redis to use; `None` starts a local `redis-server` for the run.
    pub redis_url: Option<String>,
    /// A Redis Cluster's seed nodes to use instead.
    pub redis_nodes: Vec<String>,
    /// Without `redis_nodes`: start a local cluster of this many masters
    /// (each with one replica) for the run; 0: one server.
    pub local_cluster_masters: usize,
    pub chunk_tokens: usize,
    pub chunks: usize,
    pub codec: Codec,
    /// Reads in flight at once.
    pub depth: usize,
    pub rounds: usize,
    /// Folder for the disk tier; `None` uses a temporary one.
    pub dir: Option<PathBuf>,
    /// Disk tier: drop the chunk files from the page cache before every
    /// pass, so reads come from the device.
    pub cold: bool,
    pub seed: u64,
}

impl Default for StoreBench {
    fn default() -> StoreBench {
        StoreBench {
            tier: BenchTier::Disk,
            redis_url: None,
            redis_nodes: Vec::new(),
            local_cluster_masters: 0,
            chunk_tokens: 256,
            chunks: 256,
            codec: Codec::Bf16,
            depth: 4,
            rounds: 5,
            dir: None,
            cold: false,
            seed: 1,
        }
    }
}

/// The report (`--json` writes it as is).
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    pub tier: BenchTier,
    pub codec: Codec,
    pub chunk_tokens: usize,
    pub chunks: usize,
    /// Stored bytes of one chunk (header included).
    pub chunk_bytes: u64,
    /// Bytes read per pass: every chunk once.
    pub bytes: u64,
    /// Stored bytes per token of the `small` model in this codec.
    pub kv_bytes_per_token: f64,
    pub depth: usize,
    pub rounds: usize,
    pub cold: bool,
    pub load_gb_per_s: f64,
    pub raw_gb_per_s: f64,
    /// load / raw.
    pub load_vs_raw: f64,
    /// Load and decode to f32 (GB/s of stored bytes).
    pub load_decode_gb_per_s: f64,
    pub load_tokens_per_s: f64,
    pub raw_tokens_per_s: f64,
    pub load_decode_tokens_per_s: f64,
    /// The codec alone, one thread, no I/O (GB/s of stored bytes):
    /// f32 KV to a checksummed chunk...
    pub codec_encode_gb_per_s: f64,
    /// ...and a chunk back to f32, into a reused buffer.
    pub codec_decode_gb_per_s: f64,
    /// Per round, in order.
    pub load_gb_per_s_rounds: Vec<f64>,
    pub raw_gb_per_s_rounds: Vec<f64>,
    pub load_decode_gb_per_s_rounds: Vec<f64>,
    /// The Redis used (redis tier), local or given.
    pub redis_url: Option<String>,
    /// The cluster's seed nodes, when the tier was a cluster.
    pub redis_nodes: Vec<String>,
    /// Cluster masters holding the benchmark's chunks.
    pub redis_masters_used: usize,
}

#[derive(Debug, Error)]
pub enum StoreBenchError {
    #[error("invalid benchmark: {0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("chunk format: {0}")]
    Format(#[from] FormatError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("chunk {0} was not read back (is the store large enough, or was it evicted?)")]
    Missing(ChunkKey),
    #[error("making a chunk ready on the device: {0}")]
    Device(String),
}

/// What the raw pass reads from.
enum Raw {
    Memory(Vec<EncodedChunk>),
    Disk(Vec<PathBuf>),
    Redis(redis::aio::MultiplexedConnection, Vec<String>),
    Cluster(redis::cluster_async::ClusterConnection, Vec<String>),
}

struct Setup {
    store: Arc<dyn KvStore>,
    raw: Raw,
    paths: Vec<PathBuf>,
    _redis: Option<LocalRedis>,
    _cluster: Option<LocalRedisCluster>,
    /// The cluster store itself, to ask where keys live.
    cluster_store: Option<Arc<RedisStore>>,
    /// The chunks' keys.
    keys: Vec<ChunkKey>,
    _dir: Option<tempfile_dir::TempDir>,
    redis_url: Option<String>,
    redis_nodes: Vec<String>,
    redis_keys: Vec<String>,
}

/// A temporary folder removed on drop (the engine has no `tempfile`
/// dependency outside tests).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> std::io::Result<TempDir> {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let p = std::env::temp_dir().join(format!("cake-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p)?;
            Ok(TempDir(p))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs the benchmark; `progress` gets one line per step.
pub async fn run(b: &StoreBench, progress: &dyn Fn(&str)) -> Result<StoreReport, StoreBenchError> {
    if b.chunks == 0 || b.chunk_tokens == 0 || b.depth == 0 || b.rounds == 0 {
        return Err(StoreBenchError::Invalid(
            "chunks, chunk tokens, depth and rounds must be above 0".into(),
        ));
    }
    let ns = Namespace::new([0xBE; 32], b.chunk_tokens as u32, b.codec, "bench");
    let ctx = ChunkContext::new(&ns, SMALL_LAYOUT);
    let mut rng = Rng::new(b.seed);
    let tokens: Vec<u32> = (0..b.chunks * b.chunk_tokens)
        .map(|_| rng.next_u64() as u32)
        .collect();
    let keys = chunk_keys(&ns, &tokens);
    let mut kv = KvChunk::zeros(SMALL_LAYOUT, b.chunk_tokens);
    for v in kv.data.iter_mut() {
        *v = rng.next_f32() * 4.0 - 2.0;
    }
    progress(&format!("encoding {} chunks", b.chunks));
    let mut encoded = Vec::with_capacity(b.chunks);
    for (i, key) in keys.iter().enumerate() {
        kv.data[0] = i as f32;
        encoded.push(EncodedChunk::encode(*key, &ctx, i as u32, &kv)?);
    }
    // Timed apart, each chunk dropped before the next: kept chunks would
    // time the kernel handing out fresh pages, not the codec.
    let t = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        std::hint::black_box(EncodedChunk::encode(*key, &ctx, i as u32, &kv)?);
    }
    let encode_s = t.elapsed().as_secs_f64();
    let chunk_bytes = encoded[0].len() as u64;
    let bytes = chunk_bytes * b.chunks as u64;
    let t = Instant::now();
    for (i, e) in encoded.iter().enumerate() {
        e.decode_into(&ctx, i as u32, &mut kv.data)?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    std::hint::black_box(&kv);

    progress(&format!(
        "storing {} MiB in the {} tier",
        bytes >> 20,
        b.tier.as_str()
    ));
    let setup = setup(b, &encoded, bytes).await?;
    for e in &encoded {
        setup.store.put(e.clone()).await?;
    }
    setup.store.flush().await;
    if b.cold {
        for p in &setup.paths {
            std::fs::File::open(p)?.sync_all()?;
        }
    }
    // The store and the raw side hold what they read from now on.
    drop(encoded);

    let (mut load, mut raw, mut decode) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..b.rounds {
        progress(&format!("round {}/{}", round + 1, b.rounds));
        // Alternate the order so neither pass always runs on a warmer machine.
        let passes: [u8; 3] = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for pass in passes {
            if b.cold {
                drop_page_cache(&setup.paths);
            }
            let t = match pass {
                0 => raw_pass(&setup.raw, b.depth, chunk_bytes).await?,
                1 => load_pass(setup.store.as_ref(), &keys, b.depth).await?,
                _ => decode_pass(setup.store.as_ref(), &keys, &ctx, b.depth).await?,
            };
            let gbps = bytes as f64 / t.as_secs_f64() / 1e9;
            [&mut raw, &mut load, &mut decode][pass as usize].push(gbps);
        }
    }
    let masters_used = masters_holding(&setup);
    match &setup.raw {
        Raw::Redis(conn, _) => {
            let mut conn = conn.clone();
            for k in setup.redis_keys.chunks(256) {
                let _: Result<i64, _> = redis::cmd("DEL").arg(k).query_async(&mut conn).await;
            }
        }
        Raw::Cluster(conn, _) => {
            // One key per DEL: a cluster refuses keys of several slots.
            for k in &setup.redis_keys {
                let mut conn = conn.clone();
                let _: Result<i64, _> = redis::cmd("DEL").arg(k).query_async(&mut conn).await;
            }
        }
        _ => {}
    }

    let tokens_per_gb = b.chunk_tokens as f64 / chunk_bytes as f64 * 1e9;
    let (l, r, d) = (median(&load), median(&raw), median(&decode));
    Ok(StoreReport {
        tier: b.tier,
        codec: b.codec,
        chunk_tokens: b.chunk_tokens,
        chunks: b.chunks,
        chunk_bytes,
        bytes,
        kv_bytes_per_token: chunk_bytes as f64 / b.chunk_tokens as f64,
        depth: b.depth,
        rounds: b.rounds,
        cold: b.cold,
        load_gb_per_s: l,
        raw_gb_per_s: r,
        load_vs_raw: if r > 0.0 { l / r } else { 0.0 },
        load_decode_gb_per_s: d,
        load_tokens_per_s: l * tokens_per_gb,
        raw_tokens_per_s: r * tokens_per_gb,
        load_decode_tokens_per_s: d * tokens_per_gb,
        codec_encode_gb_per_s: bytes as f64 / encode_s / 1e9,
        codec_decode_gb_per_s: bytes as f64 / decode_s / 1e9,
        load_gb_per_s_rounds: load,
        raw_gb_per_s_rounds: raw,
        load_decode_gb_per_s_rounds: decode,
        redis_url: setup.redis_url.clone(),
        redis_nodes: setup.redis_nodes.clone(),
        redis_masters_used: masters_used,
    })
}

/// On a cluster, how many masters hold the benchmark's keys (by their slot
/// in the store's slot map).
fn masters_holding(setup: &Setup) -> usize {
    match &setup.cluster_store {
        Some(store) => {
            let keys: Vec<ChunkKey> = setup.keys.clone();
            store.masters_of(&keys).len()
        }
        None => 0,
    }
}

async fn setup(
    b: &StoreBench,
    encoded: &[EncodedChunk],
    bytes: u64,
) -> Result<Setup, StoreBenchError> {
    let capacity = bytes * 2 + (1 << 20);
    Ok(match b.tier {
        BenchTier::Memory => Setup {
            store: Arc::new(MemoryStore::new(capacity)),
            // Views of the same buffers the store holds: no extra memory.
            raw: Raw::Memory(encoded.to_vec()),
            paths: Vec::new(),
            _redis: None,
            _cluster: None,
            cluster_store: None,
            keys: encoded.iter().map(EncodedChunk::key).collect(),
            _dir: None,
            redis_url: None,
            redis_nodes: Vec::new(),
            redis_keys: Vec::new(),
        },
        BenchTier::Disk => {
            let tmp = match &b.dir {
                Some(_) => None,
                None => Some(tempfile_dir::TempDir::new("bench-store")?),
            };
            let dir = match (&b.dir, &tmp) {
                (Some(d), _) => d.clone(),
                (None, Some(t)) => t.path().to_path_buf(),
                (None, None) => return Err(StoreBenchError::Invalid("no folder".into())),
            };
            let disk = DiskStore::open(&dir, capacity, false, b.depth)?;
            let paths: Vec<PathBuf> = encoded.iter().map(|e| disk.path_of(&e.key())).collect();
            Setup {
                store: Arc::new(disk),
                raw: Raw::Disk(paths.clone()),
                paths,
                _redis: None,
                _cluster: None,
                cluster_store: None,
                keys: encoded.iter().map(EncodedChunk::key).collect(),
                _dir: tmp,
                redis_url: None,
                redis_nodes: Vec::new(),
                redis_keys: Vec::new(),
            }
        }
        BenchTier::Redis if !b.redis_nodes.is_empty() || b.local_cluster_masters > 0 => {
            let (local, nodes) = if b.redis_nodes.is_empty() {
                let c = LocalRedisCluster::start(b.local_cluster_masters, 1)?;
                let urls = c.urls();
                (Some(c), urls)
            } else {
                (None, b.redis_nodes.clone())
            };
            let store = Arc::new(RedisStore::new(&bench_redis_config(
                String::new(),
                nodes.clone(),
            ))?);
            let redis_keys: Vec<String> =
                encoded.iter().map(|e| store.redis_key(&e.key())).collect();
            let conn = redis::cluster::ClusterClient::new(nodes.iter().map(String::as_str))?
                .get_async_connection()
                .await?;
            Setup {
                store: store.clone(),
                raw: Raw::Cluster(conn, redis_keys.clone()),
                paths: Vec::new(),
                _redis: None,
                _cluster: local,
                cluster_store: Some(store),
                keys: encoded.iter().map(EncodedChunk::key).collect(),
                _dir: None,
                redis_url: None,
                redis_nodes: nodes,
                redis_keys,
            }
        }
        BenchTier::Redis => {
            let (local, url) = match &b.redis_url {
                Some(u) => (None, u.clone()),
                None => {
                    let r = LocalRedis::start(&[])?;
                    let url = r.url();
                    (Some(r), url)
                }
            };
            let store = RedisStore::new(&bench_redis_config(url.clone(), Vec::new()))?;
            let redis_keys: Vec<String> =
                encoded.iter().map(|e| store.redis_key(&e.key())).collect();
            let conn = redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?;
            Setup {
                store: Arc::new(store),
                raw: Raw::Redis(conn, redis_keys.clone()),
                paths: Vec::new(),
                _redis: local,
                _cluster: None,
                cluster_store: None,
                keys: encoded.iter().map(EncodedChunk::key).collect(),
                _dir: None,
                redis_url: Some(url),
                redis_nodes: Vec::new(),
                redis_keys,
            }
        }
    })
}

/// The benchmark's Redis tier: its own key prefix, generous timeouts.
fn bench_redis_config(url: String, nodes: Vec<String>) -> RedisConfig {
    RedisConfig {
        enabled: true,
        url,
        nodes,
        key_prefix: format!("cake:bench:{}:", std::process::id()),
        ttl_ms: 600_000,
        timeout_ms: 10_000,
        connect_timeout_ms: 2_000,
        ..RedisConfig::default()
    }
}

async fn load_pass(
    store: &dyn KvStore,
    keys: &[ChunkKey],
    depth: usize,
) -> Result<Duration, StoreBenchError> {
    let t = Instant::now();
    let mut s = futures::stream::iter(
        keys.iter()
            .map(|k| async move { (*k, store.get(*k).await) }),
    )
    .buffer_unordered(depth);
    while let Some((key, got)) = s.next().await {
        if got.is_none() {
            return Err(StoreBenchError::Missing(key));
        }
    }
    Ok(t.elapsed())
}

async fn decode_pass(
    store: &dyn KvStore,
    keys: &[ChunkKey],
    ctx: &ChunkContext,
    depth: usize,
) -> Result<Duration, StoreBenchError> {
    let t = Instant::now();
    let mut s = futures::stream::iter(keys.iter().enumerate().map(|(i, k)| async move {
        let chunk = store.get(*k).await.ok_or(StoreBenchError::Missing(*k))?;
        chunk.check(ctx, i as u32)?;
        // What the loader does with a chunk: its KV as the model's tensors.
        chunk
            .checked_to_device(cake_kernels::Device::Cpu)
            .map_err(|e| StoreBenchError::Device(e.to_string()))
    }))
    .buffer_unordered(depth);
    while let Some(r) = s.next().await {
        r?;
    }
    Ok(t.elapsed())
}

async fn raw_pass(raw: &Raw, depth: usize, chunk_bytes: u64) -> Result<Duration, StoreBenchError> {
    let t = Instant::now();
    match raw {
        Raw::Memory(chunks) => {
            let mut dst = vec![0u8; chunk_bytes as usize];
            for c in chunks {
                dst.copy_from_slice(c.bytes());
                std::hint::black_box(&dst);
            }
        }
        Raw::Disk(paths) => {
            let mut s = futures::stream::iter(paths.iter().cloned().map(|p| async move {
                tokio::task::spawn_blocking(move || std::fs::read(p))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?
            }))
            .buffer_unordered(depth);
            while let Some(r) = s.next().await {
                if r?.len() as u64 != chunk_bytes {
                    return Err(StoreBenchError::Invalid("a chunk file changed size".into()));
                }
            }
        }
        Raw::Redis(conn, keys) => raw_gets(conn, keys, depth, chunk_bytes).await?,
        Raw::Cluster(conn, keys) => raw_gets(conn, keys, depth, chunk_bytes).await?,
    }
    Ok(t.elapsed())
}

/// Plain `GET`s of `keys`, `depth` in flight, each checked for its length.
async fn raw_gets<C>(
    conn: &C,
    keys: &[String],
    depth: usize,
    chunk_bytes: u64,
) -> Result<(), StoreBenchError>
where
    C: redis::aio::ConnectionLike + Clone + Send,
{
    let mut s = futures::stream::iter(keys.iter().map(|k| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("GET")
                .arg(k)
                .query_async::<Vec<u8>>(&mut conn)
                .await
        }
    }))
    .buffer_unordered(depth);
    while let Some(r) = s.next().await {
        if r?.len() as u64 != chunk_bytes {
            return Err(StoreBenchError::Invalid(
                "a chunk was evicted from Redis".into(),
            ));
        }
    }
    Ok(())
}

/// Asks the kernel to drop the files' pages (they were synced first).
fn drop_page_cache(paths: &[PathBuf]) {
    for p in paths {
        if let Ok(f) = std::fs::File::open(p) {
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
        }
    }
}
