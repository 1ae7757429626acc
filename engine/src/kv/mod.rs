//! KV chunk keys, the chunk format and the stores.
//!
//! - [`chunk_keys`]: chained blake3 keys of a prompt's full chunks under a
//!   [`Namespace`] (model, layout version, chunk size, codec, cache group).
//! - [`EncodedChunk`]: one self-describing, checksummed object per chunk;
//!   [`Codec`] `f32`/`f16`/`bf16` (lossless) or `int8` (lossy, opt-in).
//! - [`KvStore`]: batched presence, get, put, delete and stats, with the
//!   tiers [`MemoryStore`], [`DiskStore`], [`RedisStore`], composed by
//!   [`TieredStore`] (promote on hit, write behind) and slowed by
//!   [`ThrottledStore`] (a shared simulated link).
//! - [`KvConfig`] (`[kv]` in `cake.toml`) and [`build_store`].
//!
//! A reader's path: `keys = chunk_keys(&ns, &tokens)`;
//! `store.lookup(&keys)` says which chunks are stored and where;
//! [`load_chunk`] (or `store.get` + [`EncodedChunk::decode`]) gives each
//! chunk's KV, `None` for any failure. A writer's:
//! `store.put(EncodedChunk::encode(key, &ctx, index, &chunk)?)`.

mod build;
mod codec;
mod config;
mod disk;
mod down_window;
mod format;
mod key;
#[cfg(any(feature = "test-support", feature = "tools"))]
mod local_redis;
mod lru;
mod memory;
mod redis_link;
mod redis_store;
mod store;
mod telemetry;
mod throttle;
mod tiered;

pub use build::{KvError, build_store};
pub use codec::Codec;
pub use config::{DiskConfig, KvConfig, MemoryConfig, RedisConfig, ThrottleConfig, ThrottleTarget};
pub use disk::{DiskStore, FsSpace, Space};
pub use down_window::DownWindow;
pub use format::{
    ChunkContext, ChunkHeader, EncodedChunk, FORMAT_VERSION, FormatError, HEADER_LEN, decode_chunk,
};
pub use key::{ChunkKey, KV_LAYOUT_VERSION, Namespace, chunk_keys, next_chunk_key};
// Test support, and `cake bench store --tier redis` without a URL.
#[cfg(any(feature = "test-support", feature = "tools"))]
pub use local_redis::{CLUSTER_NODE_TIMEOUT_MS, LocalRedis, LocalRedisCluster};
pub use memory::MemoryStore;
pub use redis_link::slot_of;
pub use redis_store::RedisStore;
pub(crate) use store::load_chunk_to;
pub use store::{KvStore, StoreError, StoreStats, Tier, load_chunk};
pub use telemetry::describe_metrics;
pub use throttle::{Link, ThrottledStore};
pub use tiered::TieredStore;
