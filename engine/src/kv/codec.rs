//! Payload codecs: how a chunk's f32 KV becomes bytes and back.
//!
//! `f32`, `f16` and `bf16` are exact for values already representable in
//! that type (a model computing in f16 or bf16 loses nothing); `int8` keeps
//! one f32 scale per channel (layer, K|V, kv head, dim) and is lossy.
//! Everything runs over whole slices in fixed blocks: no allocation per
//! value, and loops the compiler vectorises (f16 uses F16C when present).

use std::fmt;
use std::str::FromStr;

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use serde::{Deserialize, Serialize};

use crate::KvLayout;

/// How a chunk's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    F32,
    F16,
    Bf16,
    Int8,
}

/// Values converted per block: small enough for the stack and L1.
const BLOCK: usize = 2048;

impl Codec {
    pub const ALL: [Codec; 4] = [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8];

    /// The byte that names the codec in a chunk header.
    pub fn id(self) -> u8 {
        match self {
            Codec::F32 => 1,
            Codec::F16 => 2,
            Codec::Bf16 => 3,
            Codec::Int8 => 4,
        }
    }

    pub fn from_id(id: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::F32 => "f32",
            Codec::F16 => "f16",
            Codec::Bf16 => "bf16",
            Codec::Int8 => "int8",
        }
    }

    /// Whether decode(encode(x)) == x for every x the model can produce in
    /// its own dtype.
    pub fn is_lossless(self) -> bool {
        self != Codec::Int8
    }

    /// Payload bytes for `tokens` positions of `layout`, or `None` when the
    /// size does not fit a `usize` (a hostile header).
    pub fn payload_len(self, layout: KvLayout, tokens: usize) -> Option<usize> {
        let values = tokens
            .checked_mul(layout.kv_heads)?
            .checked_mul(layout.head_dim)?
            .checked_mul(layout.layers)?
            .checked_mul(2)?;
        match self {
            Codec::F32 => values.checked_mul(4),
            Codec::F16 | Codec::Bf16 => values.checked_mul(2),
            Codec::Int8 => {
                let channels = layout
                    .layers
                    .checked_mul(2)?
                    .checked_mul(layout.kv_heads)?
                    .checked_mul(layout.head_dim)?;
                channels.checked_mul(4)?.checked_add(values)
            }
        }
    }

    /// Appends the payload of `data` (`tokens` positions of `layout`, the
    /// `KvChunk` order) to `out`. `data.len()` must match the shape.
    pub(crate) fn encode(self, layout: KvLayout, tokens: usize, data: &[f32], out: &mut Vec<u8>) {
        match self {
            Codec::F32 => {
                let start = grow(out, data.len() * 4);
                for (d, v) in out[start..].chunks_exact_mut(4).zip(data) {
                    d.copy_from_slice(&v.to_le_bytes());
                }
            }
            Codec::F16 => {
                let start = grow(out, data.len() * 2);
                let mut tmp = [f16::ZERO; BLOCK];
                for (src, dst) in data.chunks(BLOCK).zip(out[start..].chunks_mut(BLOCK * 2)) {
                    let t = &mut tmp[..src.len()];
                    t.convert_from_f32_slice(src);
                    write_u16s(t.reinterpret_cast(), dst);
                }
            }
            Codec::Bf16 => {
                let start = grow(out, data.len() * 2);
                let mut tmp = [0u16; BLOCK];
                for (src, dst) in data.chunks(BLOCK).zip(out[start..].chunks_mut(BLOCK * 2)) {
                    let t = &mut tmp[..src.len()];
                    for (o, v) in t.iter_mut().zip(src) {
                        *o = f32_to_bf16_bits(*v);
                    }
                    write_u16s(t, dst);
                }
            }
            Codec::Int8 => encode_int8(layout, tokens, data, out),
        }
    }

    /// Decodes a payload whose length the caller has checked against
    /// [`Codec::payload_len`] into `out` (`tokens` positions of `layout`).
    pub(crate) fn decode(self, layout: KvLayout, tokens: usize, payload: &[u8], out: &mut [f32]) {
        let plane = tokens * layout.kv_heads * layout.head_dim;
        if plane == 0 {
            return;
        }
        for (p, dst) in out.chunks_exact_mut(plane).enumerate() {
            self.decode_plane(layout, tokens, payload, p, dst);
        }
    }

    /// Decodes plane `p` of a checked payload (layer `p / 2`, K when `p`
    /// is even, V when odd: the `KvChunk` order) into `out`, which holds
    /// one plane (`tokens × kv_heads × head_dim` values). Lets a reader
    /// decode straight into per-layer buffers, one pass over the bytes.
    pub(crate) fn decode_plane(
        self,
        layout: KvLayout,
        tokens: usize,
        payload: &[u8],
        p: usize,
        out: &mut [f32],
    ) {
        let plane = out.len();
        let values = |width: usize| &payload[p * plane * width..(p + 1) * plane * width];
        match self {
            Codec::F32 => {
                for (o, s) in out.iter_mut().zip(values(4).chunks_exact(4)) {
                    *o = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
            }
            Codec::F16 => {
                let mut bits = [0u16; BLOCK];
                for (src, dst) in values(2).chunks(BLOCK * 2).zip(out.chunks_mut(BLOCK)) {
                    let b = &mut bits[..dst.len()];
                    read_u16s(src, b);
                    b.reinterpret_cast::<f16>().convert_to_f32_slice(dst);
                }
            }
            Codec::Bf16 => {
                for (o, s) in out.iter_mut().zip(values(2).chunks_exact(2)) {
                    *o = f32::from_bits(u32::from(u16::from_le_bytes([s[0], s[1]])) << 16);
                }
            }
            Codec::Int8 => decode_int8_plane(layout, tokens, payload, p, out),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Codec, String> {
        Codec::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown codec {s:?} (expected f32, f16, bf16 or int8)"))
    }
}

/// Grows `out` by `n` zero bytes and returns where they start.
fn grow(out: &mut Vec<u8>, n: usize) -> usize {
    let start = out.len();
    out.resize(start + n, 0);
    start
}

fn write_u16s(src: &[u16], dst: &mut [u8]) {
    for (d, v) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

fn read_u16s(src: &[u8], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = u16::from_le_bytes([s[0], s[1]]);
    }
}

/// Round to nearest even, NaN kept quiet: the same result as
/// `half::bf16::from_f32`, written branch-free so it vectorises.
#[inline]
fn f32_to_bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let rounded = (x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16) as u16;
    let nan = ((x >> 16) as u16) | 0x0040;
    if v.is_nan() { nan } else { rounded }
}

/// Channels of one K or V plane, and the planes of a chunk.
fn int8_shape(layout: KvLayout, tokens: usize) -> (usize, usize, usize) {
    let channels = layout.kv_heads * layout.head_dim;
    (channels, tokens * channels, 2 * layout.layers)
}

/// Payload: every plane's scales (f32, `planes × channels`), then every
/// value as i8, in the `KvChunk` order. `x ≈ q · scale`.
fn encode_int8(layout: KvLayout, tokens: usize, data: &[f32], out: &mut Vec<u8>) {
    let (channels, plane, planes) = int8_shape(layout, tokens);
    let scales_at = grow(out, planes * channels * 4);
    let values_at = grow(out, data.len());
    let mut amax = vec![0f32; channels];
    let mut inv = vec![0f32; channels];
    for p in 0..planes {
        let src = &data[p * plane..(p + 1) * plane];
        amax.iter_mut().for_each(|a| *a = 0.0);
        for row in src.chunks_exact(channels) {
            for (a, v) in amax.iter_mut().zip(row) {
                // NaN and infinities do not widen the scale.
                let m = if v.is_finite() { v.abs() } else { 0.0 };
                *a = a.max(m);
            }
        }
        let scales = &mut out[scales_at + p * channels * 4..scales_at + (p + 1) * channels * 4];
        for ((s, a), i) in scales.chunks_exact_mut(4).zip(&amax).zip(inv.iter_mut()) {
            let scale = a / 127.0;
            s.copy_from_slice(&scale.to_le_bytes());
            *i = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        }
        let dst = &mut out[values_at + p * plane..values_at + (p + 1) * plane];
        for (drow, row) in dst
            .chunks_exact_mut(channels)
            .zip(src.chunks_exact(channels))
        {
            for ((d, v), i) in drow.iter_mut().zip(row).zip(&inv) {
                // Round half away from zero by hand: `f32::round` is a libm
                // call on baseline x86-64 and stops vectorisation; so does
                // a direct `as i8`. Clamped first, the value fits an i32,
                // and `as` maps NaN to 0.
                let y = (v * i).clamp(-127.0, 127.0);
                *d = ((y + 0.5f32.copysign(y)) as i32 as i8) as u8;
            }
        }
    }
}

/// Plane `p` of an int8 payload (see [`encode_int8`]) into `out`.
fn decode_int8_plane(layout: KvLayout, tokens: usize, payload: &[u8], p: usize, out: &mut [f32]) {
    let (channels, plane, planes) = int8_shape(layout, tokens);
    if channels == 0 || plane == 0 {
        return;
    }
    let (scale_bytes, values) = payload.split_at(planes * channels * 4);
    let scales: Vec<f32> = scale_bytes[p * channels * 4..(p + 1) * channels * 4]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let src = &values[p * plane..(p + 1) * plane];
    for (drow, row) in out
        .chunks_exact_mut(channels)
        .zip(src.chunks_exact(channels))
    {
        for ((d, q), s) in drow.iter_mut().zip(row).zip(&scales) {
            *d = f32::from(*q as i8) * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use proptest::prelude::*;

    const L: KvLayout = KvLayout {
        layers: 2,
        kv_heads: 2,
        head_dim: 8,
    };

    fn round_trip(codec: Codec, tokens: usize, data: &[f32]) -> Vec<f32> {
        let mut bytes = Vec::new();
        codec.encode(L, tokens, data, &mut bytes);
        assert_eq!(Some(bytes.len()), codec.payload_len(L, tokens));
        let mut out = vec![f32::NAN; data.len()];
        codec.decode(L, tokens, &bytes, &mut out);
        out
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn bf16_rounding_matches_half() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0,
            1.0078125,
            2.5625,
            -2.5e-39,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            65504.0,
            1e-45,
        ] {
            assert_eq!(f32_to_bf16_bits(x), bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(bf16::from_bits(f32_to_bf16_bits(f32::NAN)).is_nan());
    }

    #[test]
    fn int8_is_close_and_smaller() {
        let tokens = 5;
        let n = tokens * L.values_per_token();
        let data: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let out = round_trip(Codec::Int8, tokens, &data);
        let amax = data.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in data.iter().zip(&out) {
            assert!((a - b).abs() <= amax / 127.0, "{a} vs {b}");
        }
        let int8 = Codec::Int8.payload_len(L, 256).unwrap();
        let bf = Codec::Bf16.payload_len(L, 256).unwrap();
        assert!(int8 < bf * 6 / 10);
    }

    #[test]
    fn int8_survives_non_finite_values() {
        let tokens = 2;
        let mut data = vec![1.0f32; tokens * L.values_per_token()];
        data[0] = f32::NAN;
        data[1] = f32::INFINITY;
        data[2] = f32::NEG_INFINITY;
        let out = round_trip(Codec::Int8, tokens, &data);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[1], 1.0);
        assert_eq!(out[2], -1.0);
    }

    #[test]
    fn names_parse_back() {
        for c in Codec::ALL {
            assert_eq!(c.name().parse::<Codec>(), Ok(c));
            assert_eq!(Codec::from_id(c.id()), Some(c));
        }
        assert!("fp8".parse::<Codec>().is_err());
    }

    proptest! {
        #[test]
        fn f32_is_exact(data in proptest::collection::vec(any::<f32>(), 3 * 64)) {
            let out = round_trip(Codec::F32, 3, &data);
            prop_assert_eq!(bits(&out), bits(&data));
        }

        #[test]
        fn f16_is_exact_for_f16_values(raw in proptest::collection::vec(any::<u16>(), 3 * 64)) {
            // Every f16 bit pattern but NaN (whose payload may be re-quieted).
            let data: Vec<f32> = raw.iter().map(|b| f16::from_bits(*b).to_f32()).filter(|v| !v.is_nan()).collect();
            let tokens = data.len() / 64;
            let data = &data[..tokens * 64];
            let out = round_trip(Codec::F16, tokens, data);
            prop_assert_eq!(bits(&out), bits(data));
        }

        #[test]
        fn bf16_is_exact_for_bf16_values(raw in proptest::collection::vec(any::<u16>(), 3 * 64)) {
            let data: Vec<f32> = raw.iter().map(|b| bf16::from_bits(*b).to_f32()).filter(|v| !v.is_nan()).collect();
            let tokens = data.len() / 64;
            let data = &data[..tokens * 64];
            let out = round_trip(Codec::Bf16, tokens, data);
            prop_assert_eq!(bits(&out), bits(data));
        }

        /// A reader decoding plane by plane into per-layer buffers gets
        /// exactly the whole-payload decode, for every codec.
        #[test]
        fn planes_decode_as_the_whole(tokens in 1usize..6, seed in any::<u32>()) {
            let n = tokens * L.values_per_token();
            let data: Vec<f32> = (0..n)
                .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / 1e7 - 200.0)
                .collect();
            let plane = tokens * L.kv_heads * L.head_dim;
            for codec in Codec::ALL {
                let mut bytes = Vec::new();
                codec.encode(L, tokens, &data, &mut bytes);
                let mut whole = vec![f32::NAN; n];
                codec.decode(L, tokens, &bytes, &mut whole);
                let mut planes = vec![f32::NAN; n];
                for (p, out) in planes.chunks_exact_mut(plane).enumerate() {
                    codec.decode_plane(L, tokens, &bytes, p, out);
                }
                prop_assert_eq!(bits(&planes), bits(&whole), "{}", codec);
            }
        }

        #[test]
        fn long_f16_runs_cross_blocks(tokens in 1usize..200) {
            let data: Vec<f32> = (0..tokens * 64).map(|i| f16::from_f32(i as f32 * 0.25).to_f32()).collect();
            let out = round_trip(Codec::F16, tokens, &data);
            prop_assert_eq!(bits(&out), bits(&data));
        }
    }
}
