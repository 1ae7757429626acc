//! The Redis tier against a real `redis-server` started on a free port
//! (skipped with a message when there is none, unless CAKE_REQUIRE_REDIS=1).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use std::sync::Arc;
use std::time::Duration;

use crate::kv_support::{prompt, redis};
use cake_engine::kv::{
    ChunkKey, Codec, KvConfig, KvStore, RedisConfig, RedisStore, Tier, build_store,
};

fn config(url: String) -> RedisConfig {
    RedisConfig {
        enabled: true,
        url,
        key_prefix: "test:kv:".into(),
        timeout_ms: 300,
        connect_timeout_ms: 300,
        retry_after_ms: 100,
        ..RedisConfig::default()
    }
}

/// Every test body is bounded: a hang is a failure, not a stuck CI.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test hung")
}

fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

#[tokio::test]
async fn redis_store_round_trips_in_pipelined_batches() {
    let Some(server) = redis(&[]) else { return };
    bounded(async {
        let store = RedisStore::new(&config(server.url())).unwrap();
        let chunks = prompt(1, 4, Codec::Bf16);
        let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
        assert_eq!(store.lookup(&keys).await, vec![None; 4]);
        for (_, enc, _) in &chunks[..3] {
            store.put(enc.clone()).await.unwrap();
        }
        assert_eq!(
            store.lookup(&keys).await,
            vec![
                Some(Tier::Redis),
                Some(Tier::Redis),
                Some(Tier::Redis),
                None
            ]
        );
        let got = store.get_many(&keys).await;
        for i in 0..3 {
            assert_eq!(got[i].as_ref(), Some(&chunks[i].1));
        }
        assert!(got[3].is_none());

        // Keys carry the prefix and a TTL.
        let mut conn = raw(&server.url());
        let name = store.redis_key(&keys[0]);
        assert!(name.starts_with("test:kv:"));
        let ttl: i64 = redis::cmd("PTTL").arg(&name).query(&mut conn).unwrap();
        assert!(ttl > 0 && ttl <= 86_400_000, "{ttl}");

        store.delete(keys[0]).await.unwrap();
        assert!(store.get(keys[0]).await.is_none());
        let s = store.stats();
        assert_eq!((s.hits, s.errors, s.corrupt), (3, 0, 0));
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_value_is_a_miss_and_is_deleted() {
    let Some(server) = redis(&[]) else { return };
    bounded(async {
        let store = RedisStore::new(&config(server.url())).unwrap();
        let chunks = prompt(2, 2, Codec::F32);
        let mut conn = raw(&server.url());
        // Garbage, and a valid chunk under another chunk's key.
        let () = redis::cmd("SET")
            .arg(store.redis_key(&chunks[0].0))
            .arg("junk")
            .query(&mut conn)
            .unwrap();
        let () = redis::cmd("SET")
            .arg(store.redis_key(&chunks[1].0))
            .arg(&chunks[0].1.bytes()[..])
            .query(&mut conn)
            .unwrap();
        let keys = [chunks[0].0, chunks[1].0];
        assert_eq!(store.get_many(&keys).await, vec![None, None]);
        assert_eq!(store.lookup(&keys).await, vec![None, None]);
        let s = store.stats();
        assert_eq!((s.corrupt, s.misses, s.errors), (2, 2, 0));
    })
    .await;
}

#[tokio::test]
async fn redis_killed_mid_test_gives_misses_then_recovers() {
    let Some(mut server) = redis(&[]) else { return };
    bounded(async {
        let store = RedisStore::new(&config(server.url())).unwrap();
        let chunks = prompt(3, 3, Codec::F32);
        let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
        for (_, enc, _) in &chunks {
            store.put(enc.clone()).await.unwrap();
        }
        assert!(store.get(keys[0]).await.is_some());

        server.kill();
        for _ in 0..5 {
            assert_eq!(store.get_many(&keys).await, vec![None, None, None]);
            assert_eq!(store.lookup(&keys).await, vec![None, None, None]);
        }
        assert!(
            store.put(chunks[0].1.clone()).await.is_err(),
            "writes report the outage"
        );
        let s = store.stats();
        assert!(s.errors >= 1, "{s:?}");
        assert_eq!(s.hits, 1);

        // A tiered store over the dead Redis still serves from memory and
        // never fails a write.
        let mut cfg = KvConfig::default();
        cfg.disk.enabled = false;
        cfg.redis = config(server.url());
        let dir = tempfile::tempdir().unwrap();
        let tiered = build_store(&cfg, dir.path()).unwrap();
        tiered.put(chunks[0].1.clone()).await.unwrap();
        tiered.flush().await;
        assert_eq!(tiered.get(keys[0]).await.as_ref(), Some(&chunks[0].1));
        assert!(tiered.get(keys[1]).await.is_none());

        // Back (empty: nothing is persisted); the store reconnects.
        server.restart().unwrap();
        let mut recovered = false;
        for _ in 0..50 {
            if store.put(chunks[1].1.clone()).await.is_ok() {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(recovered, "the store never reconnected");
        assert_eq!(store.get(keys[1]).await.as_ref(), Some(&chunks[1].1));
    })
    .await;
}

#[tokio::test]
async fn redis_down_from_the_start_is_only_misses() {
    let Some(mut server) = redis(&[]) else { return };
    server.kill();
    bounded(async {
        let store = RedisStore::new(&config(server.url())).unwrap();
        let chunks = prompt(4, 2, Codec::F32);
        let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
        assert_eq!(store.lookup(&keys).await, vec![None, None]);
        assert!(store.get(keys[0]).await.is_none());
        assert!(store.stats().errors >= 1);
    })
    .await;
}

#[tokio::test]
async fn keys_evicted_by_redis_are_plain_misses() {
    let Some(server) = redis(&["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"]) else {
        return;
    };
    bounded(async {
        let store = RedisStore::new(&config(server.url())).unwrap();
        // 1500 chunks of 4 KiB: twice what Redis may hold.
        let chunks = prompt(5, 1500, Codec::F32);
        let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
        for (_, enc, _) in &chunks {
            store.put(enc.clone()).await.unwrap();
        }
        let found = store.lookup(&keys).await;
        let present = found.iter().filter(|f| f.is_some()).count();
        assert!(
            present > 0 && present < keys.len(),
            "{present} of {} present",
            keys.len()
        );
        let got = store.get_many(&keys).await;
        let mut hits = 0;
        for ((_, enc, _), g) in chunks.iter().zip(&got) {
            if let Some(g) = g {
                assert_eq!(g, enc);
                hits += 1;
            }
        }
        assert!(hits > 0);
        let s = store.stats();
        assert_eq!((s.errors, s.corrupt), (0, 0), "{s:?}");
        assert_eq!(s.hits + s.misses, keys.len() as u64);
    })
    .await;
}

#[tokio::test]
async fn two_workers_share_chunks_through_redis() {
    let Some(server) = redis(&[]) else { return };
    bounded(async {
        let mut cfg = KvConfig::default();
        cfg.disk.enabled = false;
        cfg.redis = config(server.url());
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a: Arc<dyn KvStore> = build_store(&cfg, d1.path()).unwrap();
        let b: Arc<dyn KvStore> = build_store(&cfg, d2.path()).unwrap();
        let chunks = prompt(6, 2, Codec::F32);
        let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
        for (_, enc, _) in &chunks {
            a.put(enc.clone()).await.unwrap();
        }
        a.flush().await;
        assert_eq!(b.lookup(&keys).await, vec![Some(Tier::Redis); 2]);
        assert_eq!(b.get(keys[0]).await.as_ref(), Some(&chunks[0].1));
        b.flush().await;
        assert_eq!(
            b.lookup(&keys).await,
            vec![Some(Tier::Memory), Some(Tier::Redis)]
        );
    })
    .await;
}
