//! The chunk format: one self-describing object per chunk, a fixed
//! 128-byte header then the payload, so metadata and data are never stored
//! (or evicted) apart.
//!
//! ```text
//! offset size  field (little-endian)
//!      0    8  magic  b"\x89CAKEKV\n"
//!      8    2  format version (1)
//!     10    1  codec id
//!     11    1  flags (0)
//!     12    4  header length (128)
//!     16   32  chunk key
//!     48   32  namespace fingerprint
//!     80    4  chunk index
//!     84    4  tokens
//!     88    4  layers
//!     92    4  kv heads
//!     96    4  head dim
//!    100    4  reserved (0)
//!    104    8  payload length
//!    112    8  reserved (0)
//!    120    8  checksum: xxh3-64 of the payload, seeded with xxh3-64 of
//!              bytes 0..120 (so it guards the header too)
//!    128       payload (see `codec`)
//! ```
//!
//! xxh3 rather than blake3 for the checksum: it guards against torn and
//! flipped bytes, not against an adversary (the key, blake3, names the
//! content), and it runs at tens of GB/s, which keeps it off the load
//! path's critical cost.
//!
//! Nothing here trusts its input: every field is checked before it is
//! used, sizes with checked arithmetic, and every failure is a
//! [`FormatError`].

use bytes::Bytes;
use thiserror::Error;
use twox_hash::XxHash3_64;

use super::codec::Codec;
use super::key::{ChunkKey, Namespace};
use crate::{KvChunk, KvLayout};

pub const MAGIC: [u8; 8] = *b"\x89CAKEKV\n";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 128;
const CHECKSUM_AT: usize = 120;

/// Why bytes are not a valid chunk (or not the chunk asked for).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    #[error("{len} bytes is shorter than the {HEADER_LEN}-byte chunk header")]
    TooShort { len: usize },
    #[error("bad magic: not a Cake KV chunk")]
    BadMagic,
    #[error("chunk format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("header length {0} (expected {HEADER_LEN})")]
    BadHeaderLength(u32),
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    #[error("header fields reserved for later are not zero")]
    BadReserved,
    #[error("chunk holds key {found}, asked for {expected}")]
    KeyMismatch { expected: ChunkKey, found: ChunkKey },
    #[error("chunk shape {tokens} tokens × {layout:?} is invalid")]
    BadShape { tokens: u32, layout: KvLayout },
    #[error("payload length {header} in header, {expected} for the shape, {actual} present")]
    LengthMismatch {
        header: u64,
        expected: u64,
        actual: u64,
    },
    #[error("checksum mismatch: the chunk is corrupt")]
    ChecksumMismatch,
    #[error("chunk belongs to another namespace")]
    NamespaceMismatch,
    #[error("chunk index {found}, expected {expected}")]
    IndexMismatch { expected: u32, found: u32 },
    #[error(
        "chunk of {found_tokens} tokens × {found:?}, expected {expected_tokens} × {expected:?}"
    )]
    ShapeMismatch {
        expected: KvLayout,
        expected_tokens: u32,
        found: KvLayout,
        found_tokens: u32,
    },
    #[error("chunk codec {found}, expected {expected}")]
    CodecMismatch { expected: Codec, found: Codec },
    #[error("KV data of {values} values does not fit {tokens} tokens × {layout:?}")]
    DataLength {
        values: usize,
        tokens: usize,
        layout: KvLayout,
    },
    #[error("output buffer of {len} values, the chunk holds {needed}")]
    OutputLength { len: usize, needed: usize },
}

/// The header of a chunk that passed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub key: ChunkKey,
    pub namespace: [u8; 32],
    pub index: u32,
    pub tokens: u32,
    pub layout: KvLayout,
    pub codec: Codec,
    pub payload_len: u64,
    pub checksum: u64,
}

/// What a reader expects of every chunk it loads: from the request's
/// namespace and the model's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkContext {
    pub namespace: [u8; 32],
    pub chunk_tokens: u32,
    pub codec: Codec,
    pub layout: KvLayout,
}

impl ChunkContext {
    pub fn new(ns: &Namespace, layout: KvLayout) -> ChunkContext {
        ChunkContext {
            namespace: ns.fingerprint(),
            chunk_tokens: ns.chunk_tokens,
            codec: ns.codec,
            layout,
        }
    }
}

/// A chunk in its stored form whose header and checksum have been checked.
/// Stores hold and return only these, so whatever a store hands back has
/// passed its checks; [`EncodedChunk::decode`] adds the checks that need
/// the reader's expectations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChunk {
    header: ChunkHeader,
    bytes: Bytes,
}

impl EncodedChunk {
    /// Encodes chunk `index` of a prompt under `ctx` (the chunk's own
    /// token count is recorded; full chunks hold `ctx.chunk_tokens`).
    pub fn encode(
        key: ChunkKey,
        ctx: &ChunkContext,
        index: u32,
        chunk: &KvChunk,
    ) -> Result<EncodedChunk, FormatError> {
        let layout = chunk.layout;
        let tokens = u32::try_from(chunk.tokens).map_err(|_| FormatError::BadShape {
            tokens: u32::MAX,
            layout,
        })?;
        check_shape(tokens, layout)?;
        if chunk.data.len() != chunk.tokens * layout.values_per_token() {
            return Err(FormatError::DataLength {
                values: chunk.data.len(),
                tokens: chunk.tokens,
                layout,
            });
        }
        let codec = ctx.codec;
        let payload_len = codec
            .payload_len(layout, chunk.tokens)
            .ok_or(FormatError::BadShape { tokens, layout })?;
        let mut out = Vec::with_capacity(HEADER_LEN + payload_len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.push(codec.id());
        out.push(0);
        out.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&ctx.namespace);
        for v in [
            index,
            tokens,
            layout.layers as u32,
            layout.kv_heads as u32,
            layout.head_dim as u32,
            0,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(payload_len as u64).to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // checksum, filled below
        codec.encode(layout, chunk.tokens, &chunk.data, &mut out);
        debug_assert_eq!(out.len(), HEADER_LEN + payload_len);
        let checksum = checksum(&out[..CHECKSUM_AT], &out[HEADER_LEN..]);
        out[CHECKSUM_AT..HEADER_LEN].copy_from_slice(&checksum.to_le_bytes());
        Ok(EncodedChunk {
            header: ChunkHeader {
                key,
                namespace: ctx.namespace,
                index,
                tokens,
                layout,
                codec,
                payload_len: payload_len as u64,
                checksum,
            },
            bytes: Bytes::from(out),
        })
    }

    /// Checks bytes read from storage under `key`: magic, version, header,
    /// key, shape, lengths and checksum.
    pub fn parse(key: &ChunkKey, bytes: Bytes) -> Result<EncodedChunk, FormatError> {
        let header = parse_header(&bytes)?;
        if header.key != *key {
            return Err(FormatError::KeyMismatch {
                expected: *key,
                found: header.key,
            });
        }
        let sum = checksum(&bytes[..CHECKSUM_AT], &bytes[HEADER_LEN..]);
        if sum != header.checksum {
            return Err(FormatError::ChecksumMismatch);
        }
        Ok(EncodedChunk { header, bytes })
    }

    pub fn header(&self) -> &ChunkHeader {
        &self.header
    }

    pub fn key(&self) -> ChunkKey {
        self.header.key
    }

    /// The stored form, header included.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Stored size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Checks the chunk against what the reader expects.
    pub fn check(&self, ctx: &ChunkContext, index: u32) -> Result<(), FormatError> {
        let h = &self.header;
        if h.namespace != ctx.namespace {
            return Err(FormatError::NamespaceMismatch);
        }
        if h.index != index {
            return Err(FormatError::IndexMismatch {
                expected: index,
                found: h.index,
            });
        }
        if h.layout != ctx.layout || h.tokens != ctx.chunk_tokens {
            return Err(FormatError::ShapeMismatch {
                expected: ctx.layout,
                expected_tokens: ctx.chunk_tokens,
                found: h.layout,
                found_tokens: h.tokens,
            });
        }
        if h.codec != ctx.codec {
            return Err(FormatError::CodecMismatch {
                expected: ctx.codec,
                found: h.codec,
            });
        }
        Ok(())
    }

    /// Makes the KV of a chunk that passed [`EncodedChunk::check`] ready
    /// on `device`. On a GPU, bf16 and f16 payloads go up as they are
    /// (half the bytes of f32) and are widened there; other codecs, and
    /// the CPU, decode on the host first.
    pub(crate) fn checked_to_device(
        &self,
        device: cake_kernels::Device,
    ) -> Result<crate::cache::DeviceChunk, crate::EngineError> {
        let h = &self.header;
        let bf16 = match h.codec {
            Codec::Bf16 => Some(true),
            Codec::F16 => Some(false),
            _ => None,
        };
        match bf16 {
            Some(bf16) if !device.is_cpu() => {
                let bits: Vec<u16> = self.bytes[HEADER_LEN..]
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                crate::cache::DeviceChunk::from_half_bits(
                    h.layout,
                    h.tokens as usize,
                    &bits,
                    bf16,
                    device,
                )
            }
            // Decoded plane by plane into the tensors' own buffers: one
            // pass over the bytes, no whole-chunk staging copy.
            _ => crate::cache::DeviceChunk::from_planes(
                h.layout,
                h.tokens as usize,
                device,
                |p, out| {
                    let payload = &self.bytes[HEADER_LEN..];
                    h.codec
                        .decode_plane(h.layout, h.tokens as usize, payload, p, out)
                },
            ),
        }
    }

    /// Checks the chunk against `ctx` and decodes it.
    pub fn decode(&self, ctx: &ChunkContext, index: u32) -> Result<KvChunk, FormatError> {
        self.check(ctx, index)?;
        self.checked_decode()
    }

    /// Decodes a chunk that passed [`EncodedChunk::check`].
    pub(crate) fn checked_decode(&self) -> Result<KvChunk, FormatError> {
        let mut chunk = KvChunk::zeros(self.header.layout, self.header.tokens as usize);
        self.decode_payload(&mut chunk.data)?;
        Ok(chunk)
    }

    /// Checks the chunk against `ctx` and decodes it into `out`, which
    /// must hold exactly the chunk's values (no allocation).
    pub fn decode_into(
        &self,
        ctx: &ChunkContext,
        index: u32,
        out: &mut [f32],
    ) -> Result<(), FormatError> {
        self.check(ctx, index)?;
        self.decode_payload(out)
    }

    fn decode_payload(&self, out: &mut [f32]) -> Result<(), FormatError> {
        let h = &self.header;
        let needed = h.tokens as usize * h.layout.values_per_token();
        if out.len() != needed {
            return Err(FormatError::OutputLength {
                len: out.len(),
                needed,
            });
        }
        h.codec
            .decode(h.layout, h.tokens as usize, &self.bytes[HEADER_LEN..], out);
        Ok(())
    }
}

/// Parses and checks `bytes` read under `key`, then checks them against
/// `ctx` and decodes: the whole reader's path in one call.
pub fn decode_chunk(
    key: &ChunkKey,
    bytes: Bytes,
    ctx: &ChunkContext,
    index: u32,
) -> Result<KvChunk, FormatError> {
    EncodedChunk::parse(key, bytes)?.decode(ctx, index)
}

fn checksum(header: &[u8], payload: &[u8]) -> u64 {
    XxHash3_64::oneshot_with_seed(XxHash3_64::oneshot(header), payload)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn bytes32_at(b: &[u8], at: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}

/// Layout limits: a header naming more is hostile or corrupt.
fn check_shape(tokens: u32, layout: KvLayout) -> Result<(), FormatError> {
    let bad = tokens == 0
        || layout.layers == 0
        || layout.kv_heads == 0
        || layout.head_dim == 0
        || layout.layers > 4096
        || layout.kv_heads > 4096
        || layout.head_dim > 65536
        || tokens > 1 << 20;
    if bad {
        Err(FormatError::BadShape { tokens, layout })
    } else {
        Ok(())
    }
}

fn parse_header(b: &[u8]) -> Result<ChunkHeader, FormatError> {
    if b.len() < HEADER_LEN {
        return Err(FormatError::TooShort { len: b.len() });
    }
    if b[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let codec = Codec::from_id(b[10]).ok_or(FormatError::UnknownCodec(b[10]))?;
    let header_len = u32_at(b, 12);
    if header_len as usize != HEADER_LEN {
        return Err(FormatError::BadHeaderLength(header_len));
    }
    if b[11] != 0 || u32_at(b, 100) != 0 || u64_at(b, 112) != 0 {
        return Err(FormatError::BadReserved);
    }
    let tokens = u32_at(b, 84);
    let layout = KvLayout {
        layers: u32_at(b, 88) as usize,
        kv_heads: u32_at(b, 92) as usize,
        head_dim: u32_at(b, 96) as usize,
    };
    check_shape(tokens, layout)?;
    let payload_len = u64_at(b, 104);
    let expected = codec
        .payload_len(layout, tokens as usize)
        .ok_or(FormatError::BadShape { tokens, layout })? as u64;
    let actual = (b.len() - HEADER_LEN) as u64;
    if payload_len != expected || actual != expected {
        return Err(FormatError::LengthMismatch {
            header: payload_len,
            expected,
            actual,
        });
    }
    Ok(ChunkHeader {
        key: ChunkKey(bytes32_at(b, 16)),
        namespace: bytes32_at(b, 48),
        index: u32_at(b, 80),
        tokens,
        layout,
        codec,
        payload_len,
        checksum: u64_at(b, CHECKSUM_AT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::key::chunk_keys;
    use proptest::prelude::*;

    const L: KvLayout = KvLayout {
        layers: 2,
        kv_heads: 1,
        head_dim: 4,
    };

    fn setup(codec: Codec) -> (ChunkKey, ChunkContext, KvChunk) {
        let ns = Namespace::new([1; 32], 4, codec, "g");
        let key = chunk_keys(&ns, &[1, 2, 3, 4])[0];
        let ctx = ChunkContext::new(&ns, L);
        let mut chunk = KvChunk::zeros(L, 4);
        for (i, v) in chunk.data.iter_mut().enumerate() {
            *v = i as f32 * 0.5 - 3.0;
        }
        (key, ctx, chunk)
    }

    #[test]
    fn round_trip_every_codec() {
        for codec in Codec::ALL {
            let (key, ctx, chunk) = setup(codec);
            let enc = EncodedChunk::encode(key, &ctx, 0, &chunk).unwrap();
            assert_eq!(enc.len(), HEADER_LEN + codec.payload_len(L, 4).unwrap());
            let back = decode_chunk(&key, enc.bytes().clone(), &ctx, 0).unwrap();
            if codec.is_lossless() {
                assert_eq!(back, chunk, "{codec}");
            } else {
                assert_eq!(back.data.len(), chunk.data.len());
            }
        }
    }

    #[test]
    fn every_check_is_a_typed_error() {
        let (key, ctx, chunk) = setup(Codec::Bf16);
        let enc = EncodedChunk::encode(key, &ctx, 3, &chunk).unwrap();
        let good = enc.bytes().to_vec();
        let parse = |b: Vec<u8>| EncodedChunk::parse(&key, Bytes::from(b)).map(|_| ());
        let mut b = good.clone();
        b[0] ^= 1;
        assert_eq!(parse(b), Err(FormatError::BadMagic));
        let mut b = good.clone();
        b[8] = 9;
        assert_eq!(parse(b), Err(FormatError::UnsupportedVersion(9)));
        let mut b = good.clone();
        b[10] = 77;
        assert_eq!(parse(b), Err(FormatError::UnknownCodec(77)));
        let mut b = good.clone();
        b[HEADER_LEN + 5] ^= 0x10;
        assert_eq!(parse(b), Err(FormatError::ChecksumMismatch));
        let mut b = good.clone();
        b[81] = 1; // chunk index: header fields are under the checksum too
        assert_eq!(parse(b), Err(FormatError::ChecksumMismatch));
        let mut b = good.clone();
        b.pop();
        assert!(matches!(parse(b), Err(FormatError::LengthMismatch { .. })));
        assert_eq!(
            parse(good[..10].to_vec()),
            Err(FormatError::TooShort { len: 10 })
        );
        let other = ChunkKey([9; 32]);
        assert!(matches!(
            EncodedChunk::parse(&other, Bytes::from(good.clone())),
            Err(FormatError::KeyMismatch { .. })
        ));
        // Reader-side checks.
        let enc = EncodedChunk::parse(&key, Bytes::from(good)).unwrap();
        assert_eq!(enc.decode(&ctx, 3).map(|_| ()), Ok(()));
        assert!(matches!(
            enc.decode(&ctx, 2),
            Err(FormatError::IndexMismatch { .. })
        ));
        let mut other_ns = ctx;
        other_ns.namespace[0] ^= 1;
        assert_eq!(
            enc.decode(&other_ns, 3).map(|_| ()),
            Err(FormatError::NamespaceMismatch)
        );
        let mut other_shape = ctx;
        other_shape.layout.head_dim = 8;
        assert!(matches!(
            enc.decode(&other_shape, 3),
            Err(FormatError::ShapeMismatch { .. })
        ));
        let mut other_codec = ctx;
        other_codec.codec = Codec::F16;
        assert!(matches!(
            enc.decode(&other_codec, 3),
            Err(FormatError::CodecMismatch { .. })
        ));
        let mut small = vec![0f32; 3];
        assert!(matches!(
            enc.decode_into(&ctx, 3, &mut small),
            Err(FormatError::OutputLength { .. })
        ));
    }

    #[test]
    fn encode_rejects_data_of_the_wrong_length() {
        let (key, ctx, mut chunk) = setup(Codec::F32);
        chunk.data.pop();
        assert!(matches!(
            EncodedChunk::encode(key, &ctx, 0, &chunk),
            Err(FormatError::DataLength { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (key, ctx, _) = setup(Codec::F32);
            let _ = decode_chunk(&key, Bytes::from(bytes), &ctx, 0);
        }

        #[test]
        fn random_bytes_after_a_valid_header_never_panic(
            codec in 0usize..4,
            header_edits in proptest::collection::vec((0usize..HEADER_LEN, any::<u8>()), 0..6),
            cut in any::<proptest::sample::Index>(),
        ) {
            let (key, ctx, chunk) = setup(Codec::ALL[codec]);
            let enc = EncodedChunk::encode(key, &ctx, 0, &chunk).unwrap();
            let mut b = enc.bytes().to_vec();
            for (at, v) in header_edits {
                b[at] = v;
            }
            let _ = decode_chunk(&key, Bytes::from(b.clone()), &ctx, 0);
            b.truncate(cut.index(b.len() + 1));
            let truncated = decode_chunk(&key, Bytes::from(b.clone()), &ctx, 0);
            if b.len() < enc.len() {
                prop_assert!(truncated.is_err());
            }
        }

        #[test]
        fn a_flipped_bit_is_always_caught(codec in 0usize..4, bit in any::<proptest::sample::Index>()) {
            let (key, ctx, chunk) = setup(Codec::ALL[codec]);
            let enc = EncodedChunk::encode(key, &ctx, 0, &chunk).unwrap();
            let mut b = enc.bytes().to_vec();
            let i = bit.index(b.len() * 8);
            b[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode_chunk(&key, Bytes::from(b), &ctx, 0).is_err());
        }
    }
}
