//! The `[kv]` section of `cake.toml`: chunking, codec and the store tiers.
//! Every field has a default (`config/cake.toml` lists them all); unknown
//! keys are errors; [`KvConfig::validate`] names the field, the value and
//! what is wrong ([`Invalid`], the workspace's one config error shape).

use std::fmt;
use std::path::PathBuf;

use cake_policy::Invalid;
use serde::{Deserialize, Serialize};

use super::codec::Codec;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `[kv]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvConfig {
    /// Tokens per chunk, a power of two. Only full chunks are stored.
    pub chunk_tokens: u32,
    /// How chunks are stored: `f32`, `f16`, `bf16` (each lossless for a
    /// model computing in that type) or `int8` (lossy, opt-in, fewest
    /// bytes). The default, `f32`, is lossless for the CPU engine.
    pub codec: Codec,
    /// Bytes of chunks accepted for writing behind requests and not yet
    /// written; past this, new writes are dropped (and counted).
    pub write_behind_bytes: u64,
    /// `[kv.memory]`.
    pub memory: MemoryConfig,
    /// `[kv.disk]`.
    pub disk: DiskConfig,
    /// `[kv.redis]`.
    pub redis: RedisConfig,
    /// `[kv.throttle]`.
    pub throttle: ThrottleConfig,
}

impl Default for KvConfig {
    fn default() -> KvConfig {
        KvConfig {
            chunk_tokens: 256,
            codec: Codec::F32,
            write_behind_bytes: 256 * MIB,
            memory: MemoryConfig::default(),
            disk: DiskConfig::default(),
            redis: RedisConfig::default(),
            throttle: ThrottleConfig::default(),
        }
    }
}

/// `[kv.memory]`: chunks held in the worker's memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Use this tier.
    pub enabled: bool,
    /// Most bytes held (chunks plus a small per-chunk overhead); least
    /// recently used chunks are evicted first.
    pub capacity_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> MemoryConfig {
        MemoryConfig {
            enabled: true,
            capacity_bytes: GIB,
        }
    }
}

/// `[kv.disk]`: one file per chunk under a folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskConfig {
    /// Use this tier.
    pub enabled: bool,
    /// The folder; empty means `kv/` under the data folder.
    pub path: PathBuf,
    /// Most bytes of chunk files; least recently used are deleted first.
    /// Capped to what the folder's file system holds, at start and when a
    /// write finds the disk full.
    pub capacity_bytes: u64,
    /// fsync each chunk and its folder before it counts as written (a
    /// power loss then loses nothing; without it, a torn file is caught by
    /// its checksum and recomputed).
    pub sync_writes: bool,
    /// Most file reads and writes running at once.
    pub max_concurrent_io: usize,
}

impl Default for DiskConfig {
    fn default() -> DiskConfig {
        DiskConfig {
            enabled: true,
            path: PathBuf::new(),
            capacity_bytes: 10 * GIB,
            sync_writes: false,
            max_concurrent_io: 16,
        }
    }
}

/// `[kv.redis]`: one value per chunk in a Redis shared by every gateway
/// and worker pointed at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Use this tier.
    pub enabled: bool,
    /// `redis://[user:password@]host:port[/db]`: one server (unused when
    /// `nodes` is set).
    pub url: String,
    /// Redis Cluster seed nodes (`["redis://host:port", ...]`): when not
    /// empty the tier is a cluster, found from any of them; chunks spread
    /// over its masters by key.
    pub nodes: Vec<String>,
    /// Prepended to every key, so deployments can share one Redis.
    pub key_prefix: String,
    /// Time to live of each chunk in milliseconds (0: none; Redis's own
    /// `maxmemory` policy then decides what goes).
    pub ttl_ms: u64,
    /// Longest wait for one Redis call; past it, the call is a miss.
    pub timeout_ms: u64,
    /// Longest wait to connect.
    pub connect_timeout_ms: u64,
    /// After a failure, how long reads are misses without trying Redis.
    pub retry_after_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> RedisConfig {
        RedisConfig {
            enabled: false,
            url: "redis://127.0.0.1:6379".to_string(),
            nodes: Vec::new(),
            key_prefix: "cake:kv:".to_string(),
            ttl_ms: 24 * 3600 * 1000,
            timeout_ms: 500,
            connect_timeout_ms: 500,
            retry_after_ms: 1000,
        }
    }
}

/// What `[kv.throttle]` slows down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThrottleTarget {
    /// The whole store, every tier behind one link.
    Store,
    /// The disk tier only.
    Disk,
    /// The Redis tier only.
    Redis,
}

/// `[kv.throttle]`: a simulated storage link in front of a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Put the link in place.
    pub enabled: bool,
    /// `store`, `disk` or `redis`.
    pub target: ThrottleTarget,
    /// The link's bandwidth in bytes per second, shared by all readers
    /// (1_250_000_000 is 10 Gbps).
    pub bandwidth_bytes_per_s: u64,
    /// Added to every operation, in microseconds.
    pub latency_us: u64,
    /// Whether writes use the link's bandwidth too (reads always do).
    pub include_writes: bool,
}

impl Default for ThrottleConfig {
    fn default() -> ThrottleConfig {
        ThrottleConfig {
            enabled: false,
            target: ThrottleTarget::Store,
            bandwidth_bytes_per_s: 1_250_000_000,
            latency_us: 0,
            include_writes: false,
        }
    }
}

fn bad(field: &str, value: impl fmt::Display, reason: &str) -> Invalid {
    Invalid::new(field, value, reason)
}

impl KvConfig {
    /// Checks every value; the first bad one is named.
    pub fn validate(&self) -> Result<(), Invalid> {
        let c = self.chunk_tokens;
        if !c.is_power_of_two() || c > 1 << 16 {
            return Err(bad(
                "kv.chunk_tokens",
                c,
                "must be a power of two from 1 to 65536",
            ));
        }
        if self.write_behind_bytes == 0 {
            return Err(bad("kv.write_behind_bytes", 0, "must be above 0"));
        }
        if !(self.memory.enabled || self.disk.enabled || self.redis.enabled) {
            return Err(bad(
                "kv.memory.enabled",
                false,
                "at least one of kv.memory, kv.disk and kv.redis must be enabled",
            ));
        }
        if self.memory.enabled && self.memory.capacity_bytes == 0 {
            return Err(bad(
                "kv.memory.capacity_bytes",
                0,
                "must be above 0 when the tier is enabled",
            ));
        }
        if self.disk.enabled {
            if self.disk.capacity_bytes == 0 {
                return Err(bad(
                    "kv.disk.capacity_bytes",
                    0,
                    "must be above 0 when the tier is enabled",
                ));
            }
            if self.disk.max_concurrent_io == 0 {
                return Err(bad("kv.disk.max_concurrent_io", 0, "must be above 0"));
            }
        }
        let r = &self.redis;
        if r.enabled {
            if let Err(e) = redis::Client::open(r.url.as_str()) {
                return Err(bad(
                    "kv.redis.url",
                    format!("{:?}", r.url),
                    &format!("not a Redis URL: {e}"),
                ));
            }
            for n in &r.nodes {
                if let Err(e) = redis::Client::open(n.as_str()) {
                    return Err(bad(
                        "kv.redis.nodes",
                        format!("{n:?}"),
                        &format!("not a Redis URL: {e}"),
                    ));
                }
            }
            for (field, v) in [
                ("kv.redis.timeout_ms", r.timeout_ms),
                ("kv.redis.connect_timeout_ms", r.connect_timeout_ms),
            ] {
                if v == 0 {
                    return Err(bad(field, v, "must be above 0"));
                }
            }
        }
        let t = &self.throttle;
        if t.enabled {
            let tier_off = match t.target {
                ThrottleTarget::Store => None,
                ThrottleTarget::Disk => (!self.disk.enabled).then_some("disk"),
                ThrottleTarget::Redis => (!self.redis.enabled).then_some("redis"),
            };
            if let Some(tier) = tier_off {
                return Err(bad("kv.throttle.target", tier, "that tier is not enabled"));
            }
            if t.bandwidth_bytes_per_s == 0 && t.latency_us == 0 {
                return Err(bad(
                    "kv.throttle.bandwidth_bytes_per_s",
                    0,
                    "an enabled throttle needs a bandwidth or a latency",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        KvConfig::default().validate().unwrap();
    }

    #[test]
    fn errors_name_field_value_and_reason() {
        let c = KvConfig {
            chunk_tokens: 100,
            ..KvConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "kv.chunk_tokens");
        assert_eq!(e.value, "100");
        assert!(e.to_string().contains("power of two"), "{e}");

        let mut c = KvConfig::default();
        c.redis.enabled = true;
        c.redis.url = "http://nope".into();
        assert_eq!(c.validate().unwrap_err().field, "kv.redis.url");
        c.redis.url = RedisConfig::default().url;
        c.redis.nodes = vec!["redis://127.0.0.1:7000".into(), "nope".into()];
        assert_eq!(c.validate().unwrap_err().field, "kv.redis.nodes");

        let mut c = KvConfig::default();
        c.throttle.enabled = true;
        c.throttle.target = ThrottleTarget::Redis;
        assert_eq!(c.validate().unwrap_err().field, "kv.throttle.target");

        let mut c = KvConfig::default();
        c.memory.enabled = false;
        c.disk.enabled = false;
        assert!(c.validate().is_err());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e =
            toml::from_str::<KvConfig>("chunk_tokens = 64\n[memory]\ncapacity = 5\n").unwrap_err();
        assert!(e.to_string().contains("capacity"), "{e}");
        let c: KvConfig = toml::from_str("codec = \"bf16\"\n[disk]\nenabled = false\n").unwrap();
        assert_eq!(c.codec, Codec::Bf16);
        assert!(!c.disk.enabled);
        assert_eq!(c.memory, MemoryConfig::default());
    }
}
