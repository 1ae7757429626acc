//! The Redis tier on a real Redis Cluster: 3 masters and 3 replicas on
//! loopback ports (`redis-server --cluster-enabled yes`, joined with
//! `redis-cli --cluster create`). Skipped with a message without
//! redis-server, unless CAKE_REQUIRE_REDIS=1.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use std::time::Duration;

use tokio::time::Instant;

use crate::kv_support::prompt;
use cake_engine::kv::{
    ChunkKey, Codec, KvStore, LocalRedisCluster, RedisConfig, RedisStore, Tier, slot_of,
};

fn config(nodes: Vec<String>) -> RedisConfig {
    RedisConfig {
        enabled: true,
        nodes,
        key_prefix: "test:kv:".into(),
        timeout_ms: 500,
        connect_timeout_ms: 500,
        retry_after_ms: 200,
        ..RedisConfig::default()
    }
}

/// Every test body is bounded: a hang is a failure, not a stuck CI.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test hung")
}

#[test]
fn our_slots_are_the_clusters() {
    let Some(cluster) = LocalRedisCluster::for_test(3, 0) else {
        return;
    };
    let port = cluster.masters()[0];
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap();
    for key in [
        "foo",
        "test:kv:0123abcd",
        "cake:limits:{tenant-a}:rps",
        "{}x",
        "a{b}c",
    ] {
        let theirs: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .unwrap();
        assert_eq!(slot_of(key.as_bytes()), theirs, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_spread_over_the_masters_and_survive_a_failover() {
    let Some(mut cluster) = LocalRedisCluster::for_test(3, 1) else {
        return;
    };
    bounded(async {
        let store = RedisStore::new(&config(cluster.urls())).unwrap();
        let chunks = prompt(7, 24, Codec::Bf16);
        let keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
        assert_eq!(store.lookup(&keys).await, vec![None; keys.len()]);
        for (_, enc, _) in &chunks {
            store.put(enc.clone()).await.unwrap();
        }
        assert_eq!(
            store.lookup(&keys).await,
            vec![Some(Tier::Redis); keys.len()]
        );
        let got = store.get_many(&keys).await;
        for (g, c) in got.iter().zip(&chunks) {
            assert_eq!(g.as_ref(), Some(&c.1));
        }

        // The masters themselves hold the chunks, on more than one.
        let held = cluster.keys_per_master();
        let holding: Vec<_> = held.iter().filter(|(_, n)| *n > 0).collect();
        assert!(holding.len() >= 2, "{held:?}");
        assert_eq!(held.iter().map(|(_, n)| n).sum::<i64>(), keys.len() as i64);
        assert_eq!(store.masters_of(&keys).len(), holding.len());

        // Slots move to another master (a resharding): the store's slot map
        // is out of date, the moved keys answer MOVED, are asked again
        // where they are now, and the map is refreshed.
        let (from, to) = (holding[0].0, holding[1].0);
        let moved_before = store.masters_of(&keys);
        // One slot stays, so `from` still votes when a master fails below.
        cluster.move_slots(from, to, 1).unwrap();
        assert_eq!(
            store.masters_of(&keys),
            moved_before,
            "the map is not refreshed yet"
        );
        let got = store.get_many(&keys).await;
        for (g, c) in got.iter().zip(&chunks) {
            assert_eq!(g.as_ref(), Some(&c.1), "read after the slots moved");
        }
        assert_eq!(
            store.lookup(&keys).await,
            vec![Some(Tier::Redis); keys.len()]
        );
        // The map follows within a few calls (the nodes learn the move
        // by gossip, and the map comes from any of them).
        let gone = format!("127.0.0.1:{from}");
        let mut calls = 0;
        while store.masters_of(&keys[..]).contains(&gone) {
            calls += 1;
            assert!(calls < 50, "the slot map still names {gone}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                store.lookup(&keys).await,
                vec![Some(Tier::Redis); keys.len()]
            );
        }
        let held = cluster.keys_per_master();
        let holding: Vec<_> = held.iter().filter(|(_, n)| *n > 0).collect();
        assert!(!holding.is_empty(), "{held:?}");

        // Kill a master holding chunks: its chunks are misses, never
        // errors or waits; the other masters' chunks still load.
        let victim = holding[0].0;
        cluster.kill(victim);
        let killed = Instant::now();
        let t = Instant::now();
        let got = store.get_many(&keys).await;
        let served = got.iter().filter(|g| g.is_some()).count();
        assert!(
            served >= keys.len() - holding[0].1 as usize,
            "{served} of {} served with one master of {held:?} down",
            keys.len()
        );
        assert!(
            served < keys.len(),
            "the dead master's chunks cannot be served"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // A write to the dead master's slots is dropped, not a hang.
        let fresh = prompt(8, 12, Codec::Bf16);
        for (_, enc, _) in &fresh {
            let _ = store.put(enc.clone()).await;
        }

        // The replica takes over; then caching works again, without a
        // restart of the store.
        cluster.wait_ok(Duration::from_secs(30)).unwrap();
        let failover = killed.elapsed();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let next = prompt(100 + attempt, 12, Codec::Bf16);
            let keys: Vec<ChunkKey> = next.iter().map(|c| c.0).collect();
            for (_, enc, _) in &next {
                let _ = store.put(enc.clone()).await;
            }
            let got = store.get_many(&keys).await;
            if got.iter().all(Option::is_some) {
                break;
            }
            assert!(
                attempt < 100,
                "caching did not come back after the failover ({failover:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "failover took {failover:?}; caching back after {:?} ({attempt} attempts)",
            killed.elapsed()
        );
        assert!(store.stats().errors > 0, "the outage was counted");
    })
    .await;
}
