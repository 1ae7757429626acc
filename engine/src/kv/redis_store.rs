//! `redis`: one value per chunk (`SET prefix+hex value PX ttl`), shared by
//! every gateway and worker that points at the same Redis.
//!
//! Presence for a whole prompt is one pipelined round trip (`EXISTS` per
//! key), and so are batched gets. Redis may evict keys at any time
//! (`maxmemory` + `allkeys-lru`): a key that vanished between lookup and
//! get is a plain miss. Redis being down is never an error for a request:
//! reads become misses, logged once per outage and counted, and for
//! `retry_after` after a failure the store does not try at all, so
//! requests do not each wait out a timeout. The connection manager
//! reconnects in the background.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Value};
use tokio::time::Instant;

use super::config::RedisConfig;
use super::format::EncodedChunk;
use super::key::ChunkKey;
use super::store::{Counters, KvStore, StoreError, StoreStats, Tier};

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    timeout: Duration,
    retry_after: Duration,
    /// When the last failure happened, while Redis counts as down.
    down_since: Mutex<Option<Instant>>,
    counters: Counters,
}

impl RedisStore {
    /// Connects lazily: Redis being down at start is not an error (reads
    /// are misses until it is up). Must be called inside a tokio runtime
    /// (the connection manager runs a task).
    pub fn new(cfg: &RedisConfig) -> Result<RedisStore, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::NoRuntime);
        }
        let client = redis::Client::open(cfg.url.as_str())?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(cfg.timeout_ms)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(cfg.retry_after_ms.max(20)));
        let conn = client.get_connection_manager_lazy(manager_cfg)?;
        Ok(RedisStore {
            conn,
            prefix: cfg.key_prefix.clone(),
            ttl_ms: cfg.ttl_ms,
            timeout: Duration::from_millis(cfg.timeout_ms),
            retry_after: Duration::from_millis(cfg.retry_after_ms),
            down_since: Mutex::new(None),
            counters: Counters::new("redis"),
        })
    }

    /// The Redis key a chunk is stored under.
    pub fn redis_key(&self, key: &ChunkKey) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs one Redis call under the timeout and the down-window.
    async fn call<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        if let Some(since) = *self.down_since.lock()
            && since.elapsed() < self.retry_after
        {
            return Err(StoreError::Unavailable(self.retry_after));
        }
        let result = match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => {
                if self.down_since.lock().take().is_some() {
                    tracing::info!(op = what, "redis KV store reachable again");
                }
                return Ok(v);
            }
            Ok(Err(e)) => StoreError::Redis(e),
            Err(_) => StoreError::Timeout(self.timeout),
        };
        self.counters.error();
        let first = self.down_since.lock().replace(Instant::now()).is_none();
        if first {
            tracing::warn!(
                op = what,
                error = %result,
                retry_after_ms = self.retry_after.as_millis() as u64,
                "redis KV store unreachable; reads are misses until it is back"
            );
        } else {
            tracing::debug!(op = what, error = %result, "redis KV store still unreachable");
        }
        Err(result)
    }

    async fn get_many_now(&self, keys: &[ChunkKey]) -> Vec<Option<EncodedChunk>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("GET").arg(self.redis_key(k));
        }
        let mut conn = self.conn.clone();
        let values: Vec<Value> = match self.call("get", pipe.query_async(&mut conn)).await {
            Ok(v) => v,
            Err(_) => {
                keys.iter().for_each(|_| self.counters.miss());
                return vec![None; keys.len()];
            }
        };
        let mut out = Vec::with_capacity(keys.len());
        let mut corrupt = Vec::new();
        let mut values = values.into_iter();
        for key in keys {
            // Moved, not copied: the reply's buffer becomes the chunk's.
            let bytes = match values.next() {
                Some(Value::BulkString(b)) => Bytes::from(b),
                _ => {
                    self.counters.miss();
                    out.push(None);
                    continue;
                }
            };
            match EncodedChunk::parse(key, bytes) {
                Ok(c) => {
                    self.counters.hit(c.len());
                    out.push(Some(c));
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "corrupt KV chunk in redis; deleting it");
                    self.counters.corrupt();
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
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.redis_key(&key));
        let removed: i64 = self.call("delete", cmd.query_async(&mut conn)).await?;
        if removed > 0 {
            self.counters.deleted();
        }
        Ok(())
    }
}

impl KvStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn lookup<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<Tier>>> {
        Box::pin(async move {
            self.counters.lookups(keys.len());
            if keys.is_empty() {
                return Vec::new();
            }
            let mut pipe = redis::pipe();
            for k in keys {
                pipe.cmd("EXISTS").arg(self.redis_key(k));
            }
            let mut conn = self.conn.clone();
            match self
                .call("lookup", pipe.query_async::<Vec<i64>>(&mut conn))
                .await
            {
                Ok(found) if found.len() == keys.len() => found
                    .into_iter()
                    .map(|n| (n > 0).then_some(Tier::Redis))
                    .collect(),
                _ => vec![None; keys.len()],
            }
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
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.redis_key(&chunk.key()))
                .arg(&chunk.bytes()[..]);
            if self.ttl_ms > 0 {
                cmd.arg("PX").arg(self.ttl_ms);
            }
            let mut conn = self.conn.clone();
            let _: Value = self.call("put", cmd.query_async(&mut conn)).await?;
            self.counters.written(chunk.len());
            Ok(())
        })
    }

    fn delete(&self, key: ChunkKey) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.delete_now(key))
    }

    fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }
}
