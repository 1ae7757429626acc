//! Fixtures shared by the `kv_*` tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use cake_engine::KvChunk;
use cake_engine::KvLayout;
use cake_engine::kv::{
    ChunkContext, ChunkKey, Codec, EncodedChunk, LocalRedis, Namespace, chunk_keys,
};

pub const LAYOUT: KvLayout = KvLayout {
    layers: 2,
    kv_heads: 2,
    head_dim: 8,
};
pub const CHUNK_TOKENS: u32 = 16;

pub fn namespace(codec: Codec) -> Namespace {
    Namespace::new([3; 32], CHUNK_TOKENS, codec, "tests")
}

pub fn context(codec: Codec) -> ChunkContext {
    ChunkContext::new(&namespace(codec), LAYOUT)
}

/// `n` chunks of a prompt seeded by `seed`: keys, encoded chunks and the
/// KV they hold.
pub fn prompt(seed: u32, n: usize, codec: Codec) -> Vec<(ChunkKey, EncodedChunk, KvChunk)> {
    let tokens: Vec<u32> = (0..n as u32 * CHUNK_TOKENS)
        .map(|i| i.wrapping_mul(2654435761).wrapping_add(seed))
        .collect();
    let keys = chunk_keys(&namespace(codec), &tokens);
    let ctx = context(codec);
    keys.into_iter()
        .enumerate()
        .map(|(i, key)| {
            let mut kv = KvChunk::zeros(LAYOUT, CHUNK_TOKENS as usize);
            for (j, v) in kv.data.iter_mut().enumerate() {
                // Small integers: exact in every lossless codec.
                *v = ((j as u32 + seed + i as u32) % 61) as f32 - 30.0;
            }
            let enc = EncodedChunk::encode(key, &ctx, i as u32, &kv).unwrap();
            (key, enc, kv)
        })
        .collect()
}

/// A local redis-server, or `None` (with the reason printed) when there is
/// no binary — unless `CAKE_REQUIRE_REDIS=1`, where that is a failure.
pub fn redis(extra: &[&str]) -> Option<LocalRedis> {
    LocalRedis::for_test(extra)
}
