//! From `[kv]` to a store: the enabled tiers, fastest first, behind one
//! write-behind, with the throttle where the config puts it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cake_policy::Invalid;
use thiserror::Error;

use super::config::{KvConfig, ThrottleTarget};
use super::disk::DiskStore;
use super::memory::MemoryStore;
use super::redis_store::RedisStore;
use super::store::{KvStore, StoreError};
use super::throttle::{Link, ThrottledStore};
use super::tiered::TieredStore;

#[derive(Debug, Error)]
pub enum KvError {
    #[error("config: {0}")]
    Config(#[from] Invalid),
    #[error("kv store: {0}")]
    Store(#[from] StoreError),
}

/// Builds the store `cfg` describes; the disk tier defaults to
/// `data_dir/kv`. Opening the disk tier reads its folder (blocking), and
/// the Redis tier connects lazily (Redis being down is not an error here)
/// and needs to be built inside a tokio runtime.
pub fn build_store(cfg: &KvConfig, data_dir: &Path) -> Result<Arc<dyn KvStore>, KvError> {
    cfg.validate()?;
    let t = &cfg.throttle;
    let link = Arc::new(Link::new(
        t.bandwidth_bytes_per_s,
        Duration::from_micros(t.latency_us),
    ));
    let throttle = |store: Arc<dyn KvStore>, target: ThrottleTarget| -> Arc<dyn KvStore> {
        if t.enabled && t.target == target {
            Arc::new(ThrottledStore::new(store, link.clone(), t.include_writes))
        } else {
            store
        }
    };
    let mut tiers: Vec<Arc<dyn KvStore>> = Vec::new();
    if cfg.memory.enabled {
        tiers.push(Arc::new(MemoryStore::new(cfg.memory.capacity_bytes)));
    }
    if cfg.disk.enabled {
        let d = &cfg.disk;
        let path = if d.path.as_os_str().is_empty() {
            data_dir.join("kv")
        } else {
            d.path.clone()
        };
        let disk = DiskStore::open(&path, d.capacity_bytes, d.sync_writes, d.max_concurrent_io)?;
        tiers.push(throttle(Arc::new(disk), ThrottleTarget::Disk));
    }
    if cfg.redis.enabled {
        let redis = RedisStore::new(&cfg.redis)?;
        tiers.push(throttle(Arc::new(redis), ThrottleTarget::Redis));
    }
    let tiered: Arc<dyn KvStore> = Arc::new(TieredStore::new(tiers, cfg.write_behind_bytes));
    Ok(throttle(tiered, ThrottleTarget::Store))
}
