//! Chunk keys: a chained blake3 hash over a namespace and each full chunk's
//! tokens, so a key names a chunk *and everything before it*.
//!
//! `key_0 = H(ns ‖ tokens_0)`, `key_i = H(key_{i−1} ‖ tokens_i)`, where `ns`
//! is the namespace's fingerprint and tokens are `u32` little-endian. Every
//! input to `H` has a fixed length (32 bytes, then `chunk_tokens · 4`), so no
//! two different inputs are ever concatenated into the same bytes.

use std::fmt;

use super::codec::Codec;

/// Version of the KV layout the engine writes (`[layer][K|V][token][kv_head]
/// [head_dim]`). Part of every namespace, so a change of layout never reads
/// old chunks.
pub const KV_LAYOUT_VERSION: u32 = 1;

/// What a chunk's KV depends on besides its tokens. Two prompts share chunks
/// only when their namespaces are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    /// The model's fingerprint (`Model::fingerprint()`).
    pub model: [u8; 32],
    /// [`KV_LAYOUT_VERSION`] unless testing.
    pub layout_version: u32,
    /// Tokens per chunk.
    pub chunk_tokens: u32,
    /// How chunks are encoded (a lossy codec gives different KV).
    pub codec: Codec,
    /// The tenant's cache group: tenants in one group share prefixes.
    pub cache_group: String,
}

impl Namespace {
    pub fn new(model: [u8; 32], chunk_tokens: u32, codec: Codec, cache_group: &str) -> Namespace {
        Namespace {
            model,
            layout_version: KV_LAYOUT_VERSION,
            chunk_tokens,
            codec,
            cache_group: cache_group.to_string(),
        }
    }

    /// blake3 of every field, each fixed-size or length-prefixed, under a
    /// domain string of its own. Stored in each chunk's header too.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("cake kv namespace v1");
        h.update(&self.model);
        h.update(&self.layout_version.to_le_bytes());
        h.update(&self.chunk_tokens.to_le_bytes());
        h.update(&[self.codec.id()]);
        h.update(&(self.cache_group.len() as u64).to_le_bytes());
        h.update(self.cache_group.as_bytes());
        *h.finalize().as_bytes()
    }
}

/// The key of one stored chunk: 32 bytes, shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey(pub [u8; 32]);

impl ChunkKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<ChunkKey> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            *o = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(ChunkKey(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkKey({self})")
    }
}

/// Keys of every full chunk of `tokens` (a trailing partial chunk gets none).
pub fn chunk_keys(ns: &Namespace, tokens: &[u32]) -> Vec<ChunkKey> {
    let c = ns.chunk_tokens as usize;
    if c == 0 {
        return Vec::new();
    }
    let mut keys = Vec::with_capacity(tokens.len() / c);
    for chunk in tokens.chunks_exact(c) {
        keys.push(next_chunk_key(ns, keys.last(), chunk));
    }
    keys
}

/// The key of the chunk holding `tokens` after the chunk keyed `prev`
/// (`None`: the first chunk). Extends [`chunk_keys`] one chunk at a time,
/// as a sequence grows during decoding.
pub fn next_chunk_key(ns: &Namespace, prev: Option<&ChunkKey>, tokens: &[u32]) -> ChunkKey {
    let root;
    let prev = match prev {
        Some(k) => &k.0,
        None => {
            root = ns.fingerprint();
            &root
        }
    };
    let mut h = blake3::Hasher::new();
    h.update(prev);
    for t in tokens {
        h.update(&t.to_le_bytes());
    }
    ChunkKey(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ns(group: &str, chunk: u32) -> Namespace {
        Namespace::new([7; 32], chunk, Codec::Bf16, group)
    }

    #[test]
    fn only_full_chunks_get_keys() {
        let n = ns("g", 4);
        assert_eq!(chunk_keys(&n, &[1, 2, 3]).len(), 0);
        assert_eq!(chunk_keys(&n, &[1, 2, 3, 4, 5, 6, 7]).len(), 1);
        assert_eq!(chunk_keys(&n, &[0; 8]).len(), 2);
    }

    #[test]
    fn hex_round_trips() {
        let k = chunk_keys(&ns("g", 2), &[1, 2])[0];
        let hex = k.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(ChunkKey::from_hex(&hex), Some(k));
        assert_eq!(ChunkKey::from_hex(&hex.to_uppercase()), Some(k));
        assert_eq!(ChunkKey::from_hex("zz"), None);
    }

    #[test]
    fn first_key_is_hash_of_namespace_and_tokens() {
        let n = ns("g", 2);
        let mut h = blake3::Hasher::new();
        h.update(&n.fingerprint());
        h.update(&[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(chunk_keys(&n, &[1, 2])[0].0, *h.finalize().as_bytes());
    }

    proptest! {
        #[test]
        fn keys_extended_one_chunk_at_a_time_equal_the_whole(
            tokens in proptest::collection::vec(any::<u32>(), 0..80),
        ) {
            let ns = ns("g", 8);
            let mut grown: Vec<ChunkKey> = Vec::new();
            for chunk in tokens.chunks_exact(8) {
                let k = next_chunk_key(&ns, grown.last(), chunk);
                grown.push(k);
            }
            prop_assert_eq!(grown, chunk_keys(&ns, &tokens));
        }

        #[test]
        fn equal_prefixes_give_equal_keys(
            prefix in proptest::collection::vec(any::<u32>(), 0..64),
            a in proptest::collection::vec(any::<u32>(), 0..32),
            b in proptest::collection::vec(any::<u32>(), 0..32),
        ) {
            let n = ns("g", 4);
            let full = prefix.len() / 4;
            let ka = chunk_keys(&n, &[prefix.clone(), a].concat());
            let kb = chunk_keys(&n, &[prefix.clone(), b].concat());
            prop_assert_eq!(&ka[..full], &kb[..full]);
        }

        #[test]
        fn a_changed_token_changes_its_chunk_and_later_only(
            tokens in proptest::collection::vec(any::<u32>(), 4..80),
            pos in any::<proptest::sample::Index>(),
            delta in 1u32..,
        ) {
            let n = ns("g", 4);
            let mut changed = tokens.clone();
            let p = pos.index(tokens.len());
            changed[p] = changed[p].wrapping_add(delta);
            let ka = chunk_keys(&n, &tokens);
            let kb = chunk_keys(&n, &changed);
            prop_assert_eq!(ka.len(), kb.len());
            let j = p / 4;
            for i in 0..ka.len() {
                if i < j {
                    prop_assert_eq!(ka[i], kb[i]);
                } else {
                    prop_assert_ne!(ka[i], kb[i]);
                }
            }
        }

        #[test]
        fn different_namespaces_never_share_a_key(
            tokens in proptest::collection::vec(any::<u32>(), 4..64),
            ga in "[a-c]{0,3}",
            gb in "[a-c]{0,3}",
            model_byte in any::<u8>(),
            version in 0u32..3,
            codec_b in 0usize..4,
        ) {
            let a = ns(&ga, 4);
            let mut b = ns(&gb, 4);
            b.model[0] = model_byte;
            b.layout_version = version;
            b.codec = Codec::ALL[codec_b];
            prop_assume!(a != b);
            let ka = chunk_keys(&a, &tokens);
            let kb = chunk_keys(&b, &tokens);
            for x in &ka {
                prop_assert!(!kb.contains(x));
            }
        }

        #[test]
        fn chunk_size_is_part_of_the_namespace(tokens in proptest::collection::vec(any::<u32>(), 8..9)) {
            // Same bytes hashed, different chunk sizes: no shared key.
            let k4 = chunk_keys(&ns("g", 4), &tokens);
            let k8 = chunk_keys(&ns("g", 8), &tokens);
            prop_assert!(!k4.contains(&k8[0]));
        }
    }
}
