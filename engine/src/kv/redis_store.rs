//! `redis`: one value per chunk (`SET prefix+hex value PX ttl`), shared by
//! every gateway and worker that points at the same Redis or Redis
//! Cluster (`kv.redis.nodes`, where chunks spread over the masters by key).
//!
//! Presence for a whole prompt is one pipelined round trip per server
//! (`EXISTS` per key), and so are batched gets (see [`super::redis_link`]).
//! Redis may evict keys at any time (`maxmemory` + `allkeys-lru`): a key
//! that vanished between lookup and get is a plain miss. Redis being down is never an error for a request:
//! reads become misses, logged once per outage and counted, and for
//! `retry_after` after a failure the store does not try at all, so
//! requests do not each wait out a timeout; on a cluster that holds for
//! each master alone, and a failover is a few seconds of misses. The
//! connections reconnect in the background.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use redis::Value;

use super::config::RedisConfig;
use super::format::EncodedChunk;
use super::key::ChunkKey;
use super::redis_link::{Backend, Link};
use super::store::{Counters, KvStore, StoreError, StoreStats, Tier};

pub struct RedisStore {
    backend: Backend,
    link: Link,
    prefix: String,
    ttl_ms: u64,
}

impl RedisStore {
    /// Connects lazily: Redis being down at start is not an error (reads
    /// are misses until it is up). Must be called inside a tokio runtime
    /// (the connection manager runs a task).
    pub fn new(cfg: &RedisConfig) -> Result<RedisStore, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::NoRuntime);
        }
        Ok(RedisStore {
            backend: Backend::new(cfg)?,
            link: Link {
                timeout: Duration::from_millis(cfg.timeout_ms),
                retry_after: Duration::from_millis(cfg.retry_after_ms),
                counters: Counters::new("redis"),
            },
            prefix: cfg.key_prefix.clone(),
            ttl_ms: cfg.ttl_ms,
        })
    }

    /// The Redis key a chunk is stored under.
    pub fn redis_key(&self, key: &ChunkKey) -> String {
        format!("{}{key}", self.prefix)
    }

    /// On a cluster, the masters the slot map says hold `keys`.
    pub fn masters_of(&self, keys: &[ChunkKey]) -> std::collections::BTreeSet<String> {
        keys.iter()
            .filter_map(|k| self.backend.master_of(&self.redis_key(k)))
            .collect()
    }

    /// One single-key command per chunk, one round trip per server.
    async fn each(
        &self,
        what: &'static str,
        name: &str,
        keys: &[ChunkKey],
        arg: impl Fn(&mut redis::Cmd, usize),
    ) -> Vec<Result<Value, StoreError>> {
        let rkeys: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
        let cmds = rkeys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let mut c = redis::cmd(name);
                c.arg(k);
                arg(&mut c, i);
                c
            })
            .collect();
        self.backend.run(&self.link, what, cmds, &rkeys).await
    }

    async fn get_many_now(&self, keys: &[ChunkKey]) -> Vec<Option<EncodedChunk>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let counters = &self.link.counters;
        let values = self.each("get", "GET", keys, |_, _| {}).await;
        let mut out = Vec::with_capacity(keys.len());
        let mut corrupt = Vec::new();
        for (key, value) in keys.iter().zip(values) {
            // Moved, not copied: the reply's buffer becomes the chunk's.
            let bytes = match value {
                Ok(Value::BulkString(b)) => Bytes::from(b),
                _ => {
                    counters.miss();
                    out.push(None);
                    continue;
                }
            };
            match EncodedChunk::parse(key, bytes) {
                Ok(c) => {
                    counters.hit(c.len());
                    out.push(Some(c));
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "corrupt KV chunk in redis; deleting it");
                    counters.corrupt();
                    corrupt.push(*key);
                    out.push(None);
                }
            }
        }
        for key in corrupt {
            let _ = self.delete_now(key).await;
        }
        out
    }

    async fn delete_now(&self, key: ChunkKey) -> Result<(), StoreError> {
        let removed = self.each("delete", "DEL", &[key], |_, _| {}).await;
        match removed.into_iter().next() {
            Some(Ok(Value::Int(n))) => {
                if n > 0 {
                    self.link.counters.deleted();
                }
                Ok(())
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Err(StoreError::Timeout(self.link.timeout)),
        }
    }
}

impl KvStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn lookup<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<Tier>>> {
        Box::pin(async move {
            self.link.counters.lookups(keys.len());
            self.each("lookup", "EXISTS", keys, |_, _| {})
                .await
                .into_iter()
                .map(|r| matches!(r, Ok(Value::Int(n)) if n > 0).then_some(Tier::Redis))
                .collect()
        })
    }

    fn get(&self, key: ChunkKey) -> BoxFuture<'_, Option<EncodedChunk>> {
        Box::pin(async move { self.get_many_now(&[key]).await.pop().flatten() })
    }

    fn get_many<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<EncodedChunk>>> {
        Box::pin(self.get_many_now(keys))
    }

    fn put(&self, chunk: EncodedChunk) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let ttl = self.ttl_ms;
            let bytes = chunk.bytes();
            let written = self
                .each("put", "SET", &[chunk.key()], |c, _| {
                    c.arg(&bytes[..]);
                    if ttl > 0 {
                        c.arg("PX").arg(ttl);
                    }
                })
                .await;
            match written.into_iter().next() {
                Some(Ok(_)) => {
                    self.link.counters.written(chunk.len());
                    Ok(())
                }
                Some(Err(e)) => Err(e),
                None => Err(StoreError::Timeout(self.link.timeout)),
            }
        })
    }

    fn delete(&self, key: ChunkKey) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.delete_now(key))
    }

    fn stats(&self) -> StoreStats {
        self.link.counters.snapshot()
    }
}
