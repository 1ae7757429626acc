//! `cake bench store` runs end to end on every tier (a smoke test: no
//! timing is asserted).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use cake_engine::bench::store::{BenchTier, StoreBench, run};
use cake_engine::kv::Codec;

async fn smoke(tier: BenchTier, codec: Codec) {
    let bench = StoreBench {
        tier,
        chunk_tokens: 16,
        chunks: 4,
        codec,
        depth: 2,
        rounds: 2,
        cold: tier == BenchTier::Disk,
        ..StoreBench::default()
    };
    let r = run(&bench, &|_| {}).await.unwrap();
    assert_eq!(r.bytes, 4 * r.chunk_bytes);
    assert_eq!(r.load_gb_per_s_rounds.len(), 2);
    assert!(r.load_gb_per_s > 0.0 && r.raw_gb_per_s > 0.0 && r.load_decode_gb_per_s > 0.0);
    let json = serde_json::to_value(&r).unwrap();
    for field in ["tier", "bytes", "load_gb_per_s", "raw_gb_per_s"] {
        assert!(json.get(field).is_some(), "{field} missing from the report");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_store_runs_on_memory_and_disk() {
    smoke(BenchTier::Memory, Codec::Int8).await;
    smoke(BenchTier::Disk, Codec::Bf16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_store_runs_on_a_local_redis() {
    // Only to learn whether redis-server is there (the bench starts its own).
    if crate::kv_support::redis(&[]).is_none() {
        return;
    }
    smoke(BenchTier::Redis, Codec::F16).await;
}
