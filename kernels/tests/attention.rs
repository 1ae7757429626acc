//! `attention` against a full-score-matrix reference, and its determinism:
//! results must not depend on how the cache is chunked or how many query
//! rows share a call.
#![allow(clippy::unwrap_used)] // test code: a failed call should fail loudly

use crate::common::{Rng, assert_close, bits, t};
use cake_kernels::{
    KeyBlocks, Tensor,
    ops::{Attn, attention, attention_many},
};
use proptest::prelude::*;

struct Case {
    m: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    q_pos0: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Case {
    fn new(m: usize, heads: usize, kv_heads: usize, hd: usize, q_pos0: usize, seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let total = q_pos0 + m;
        // Spread scores over a few units so the softmax is not flat.
        let q = rng.vec(m * heads * hd).iter().map(|x| x * 3.0).collect();
        Case {
            m,
            heads,
            kv_heads,
            hd,
            q_pos0,
            q,
            k: rng.vec(total * kv_heads * hd),
            v: rng.vec(total * kv_heads * hd),
        }
    }

    fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }

    /// The cache cut at `cuts` (positions, increasing).
    fn chunks(&self, cuts: &[usize]) -> (Vec<Tensor>, Vec<Tensor>) {
        let row = self.kv_heads * self.hd;
        let total = self.q_pos0 + self.m;
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < total));
        bounds.push(total);
        let piece = |x: &[f32], a: usize, b: usize| {
            t(
                x[a * row..b * row].to_vec(),
                &[b - a, self.kv_heads, self.hd],
            )
        };
        bounds
            .windows(2)
            .map(|w| (piece(&self.k, w[0], w[1]), piece(&self.v, w[0], w[1])))
            .unzip()
    }

    /// Rows `r0..r1` of the queries over the cache cut at `cuts`.
    fn run(&self, r0: usize, r1: usize, cuts: &[usize]) -> Vec<f32> {
        let (ks, vs) = self.chunks(cuts);
        let (kr, vr): (Vec<&Tensor>, Vec<&Tensor>) = (ks.iter().collect(), vs.iter().collect());
        let w = self.heads * self.hd;
        let q = t(
            self.q[r0 * w..r1 * w].to_vec(),
            &[r1 - r0, self.heads, self.hd],
        );
        let out = attention(&q, self.q_pos0 + r0, &kr, &vr, self.scale()).unwrap();
        assert_eq!(out.shape(), q.shape());
        out.into_vec().unwrap()
    }

    fn reference(&self) -> Vec<f64> {
        let dims = (self.m, self.heads, self.kv_heads, self.hd);
        crate::common::attention(&self.q, &self.k, &self.v, dims, self.q_pos0, self.scale())
    }

    fn check(&self, cuts: &[usize]) -> Vec<f32> {
        let got = self.run(0, self.m, cuts);
        assert_close(&got, &self.reference(), 2e-5, "attention");
        got
    }
}

#[test]
fn prefill_from_zero_matches_reference() {
    Case::new(70, 4, 2, 64, 0, 1).check(&[]);
}

#[test]
fn queries_after_a_cached_prefix() {
    let c = Case::new(33, 4, 2, 64, 200, 2);
    c.check(&[64, 128, 200]);
}

#[test]
fn grouped_query_groups_1_2_4() {
    for (i, &(heads, kv)) in [(2, 2), (4, 2), (8, 2), (4, 1)].iter().enumerate() {
        Case::new(9, heads, kv, 32, 90, 10 + i as u64).check(&[50]);
    }
}

#[test]
fn decode_single_query_over_long_cache() {
    let c = Case::new(1, 4, 2, 64, 1500, 3);
    c.check(&[256, 512, 768, 1024, 1280]);
}

#[test]
fn head_dims_that_are_not_multiples_of_16() {
    for (i, hd) in [2usize, 6, 40, 80, 130].into_iter().enumerate() {
        Case::new(5, 2, 1, hd, 70, 20 + i as u64).check(&[33]);
    }
}

#[test]
fn chunk_splits_give_identical_bits() {
    let c = Case::new(40, 4, 2, 64, 300, 4);
    let one = c.check(&[]);
    for cuts in [
        vec![300],
        vec![1, 2, 3, 64, 65, 300],
        vec![17, 150, 301, 320],
    ] {
        assert_eq!(bits(&c.run(0, c.m, &cuts)), bits(&one), "cuts {cuts:?}");
    }
}

#[test]
fn prefill_in_two_calls_equals_one_call_bitwise() {
    // As the engine does: the second call sees the first call's keys as an
    // extra chunk and its own as the last one.
    let c = Case::new(150, 4, 2, 64, 0, 5);
    let whole = c.run(0, 150, &[]);
    let w = c.heads * c.hd;
    for cut in [1, 64, 97, 149] {
        let mut split = c.run(0, cut, &[cut]);
        split.extend(c.run(cut, 150, &[cut]));
        assert_eq!(bits(&split), bits(&whole), "split at {cut}");
        // And any single row alone gives that row's bits.
        let r = cut;
        if r < c.m {
            assert_eq!(
                bits(&c.run(r, r + 1, &[r])),
                bits(&whole[r * w..(r + 1) * w])
            );
        }
    }
}

#[test]
fn many_sequences_in_one_call_give_each_its_own_bits() {
    // A decode batch: sequences of different lengths and chunkings, one
    // query row each (and one prefill block among them).
    let cases = [
        (Case::new(1, 4, 2, 64, 300, 30), vec![256, 299]),
        (Case::new(1, 4, 2, 64, 17, 31), vec![]),
        (Case::new(5, 4, 2, 64, 64, 32), vec![64]),
        (Case::new(1, 4, 2, 64, 1000, 33), vec![512, 999]),
    ];
    let alone: Vec<Vec<f32>> = cases.iter().map(|(c, cuts)| c.run(0, c.m, cuts)).collect();
    let chunks: Vec<(Vec<Tensor>, Vec<Tensor>)> =
        cases.iter().map(|(c, cuts)| c.chunks(cuts)).collect();
    let refs: Vec<(Vec<&Tensor>, Vec<&Tensor>)> = chunks
        .iter()
        .map(|(k, v)| (k.iter().collect(), v.iter().collect()))
        .collect();
    let qs: Vec<Tensor> = cases
        .iter()
        .map(|(c, _)| t(c.q.clone(), &[c.m, c.heads, c.hd]))
        .collect();
    let calls: Vec<Attn<'_>> = cases
        .iter()
        .zip(&qs)
        .zip(&refs)
        .map(|(((c, _), q), (k, v))| Attn {
            q,
            q_pos0: c.q_pos0,
            keys: k,
            values: v,
            key_blocks: None,
        })
        .collect();
    let scale = cases[0].0.scale();
    let got = attention_many(&calls, scale).unwrap();
    assert_eq!(got.len(), cases.len());
    for (i, (g, a)) in got.iter().zip(&alone).enumerate() {
        assert_eq!(bits(&g.to_vec().unwrap()), bits(a), "sequence {i}");
    }
    // A bad sequence fails the call.
    let short = Attn {
        q_pos0: 5000,
        ..calls[1]
    };
    assert!(attention_many(&[calls[0], short], scale).is_err());
    assert!(attention_many(&[], scale).unwrap().is_empty());
}

#[test]
fn bad_shapes_are_errors() {
    let q = t(vec![0.0; 2 * 4 * 8], &[2, 4, 8]);
    let k = t(vec![0.0; 2 * 2 * 8], &[2, 2, 8]);
    let short = t(vec![0.0; 2 * 8], &[1, 2, 8]);
    let odd = t(vec![0.0; 2 * 3 * 8], &[2, 3, 8]);
    assert!(attention(&q, 0, &[&k], &[&k], 1.0).is_ok());
    assert!(
        attention(&q, 1, &[&k], &[&k], 1.0).is_err(),
        "cache too short"
    );
    assert!(attention(&q, 0, &[&short], &[&short], 1.0).is_err());
    assert!(
        attention(&q, 0, &[&odd], &[&odd], 1.0).is_err(),
        "4 heads over 3"
    );
    assert!(attention(&q, 0, &[], &[], 1.0).is_err());
    assert!(attention(&q, 0, &[&k], &[], 1.0).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn any_chunking_and_row_split(
        m in 1usize..24,
        q_pos0 in 0usize..160,
        gi in 0usize..3,
        cuts in proptest::collection::vec(1usize..190, 0..5),
        row_cut in 0usize..24,
        seed: u64,
    ) {
        let (heads, kv) = [(2, 2), (4, 2), (4, 1)][gi];
        let c = Case::new(m, heads, kv, 16, q_pos0, seed);
        let mut cuts = cuts;
        cuts.sort_unstable();
        cuts.dedup();
        let whole = c.check(&[]);
        prop_assert_eq!(bits(&c.run(0, m, &cuts)), bits(&whole));
        let rc = row_cut.min(m);
        let mut split = c.run(0, rc, &cuts);
        split.extend(c.run(rc, m, &cuts));
        prop_assert_eq!(bits(&split), bits(&whole));
    }
}

#[test]
fn packed_key_blocks_give_the_same_bits() {
    // A decode row, a prefill block and a head size that is no multiple
    // of 16 (the portable transpose); blocks packed over all the keys,
    // over a prefix of them (a cache that grew since), and grown in steps.
    for (c, cuts) in [
        (Case::new(1, 4, 2, 64, 300, 40), vec![100, 256, 299]),
        (Case::new(40, 4, 2, 64, 200, 41), vec![64, 128, 200]),
        (Case::new(3, 2, 1, 40, 130, 42), vec![7, 70]),
    ] {
        let (ks, vs) = c.chunks(&cuts);
        let (kr, vr): (Vec<&Tensor>, Vec<&Tensor>) = (ks.iter().collect(), vs.iter().collect());
        let q = t(c.q.clone(), &[c.m, c.heads, c.hd]);
        let plain = attention(&q, c.q_pos0, &kr, &vr, c.scale()).unwrap();
        let total = c.q_pos0 + c.m;
        let mut grown = KeyBlocks::new();
        for upto in 1..=kr.len() {
            grown.extend(&kr[..upto]).unwrap();
            let mut fresh = KeyBlocks::new();
            fresh.extend(&kr[..upto]).unwrap();
            assert_eq!(fresh.positions(), grown.positions());
            assert!(
                fresh.positions() <= total
                    && fresh.positions() + 64
                        > kr[..upto].iter().map(|k| k.shape()[0]).sum::<usize>()
            );
            let with = attention_many(
                &[Attn {
                    q: &q,
                    q_pos0: c.q_pos0,
                    keys: &kr,
                    values: &vr,
                    key_blocks: Some(&grown),
                }],
                c.scale(),
            )
            .unwrap();
            assert_eq!(
                bits(&with[0].to_vec().unwrap()),
                bits(&plain.to_vec().unwrap()),
                "{} chunks packed",
                upto
            );
        }
        // Dropping positions drops the blocks past them.
        grown.truncate(100);
        assert_eq!(grown.positions(), 64);
    }
    // Blocks that do not fit the call are refused.
    let c = Case::new(1, 4, 2, 64, 130, 43);
    let (ks, vs) = c.chunks(&[]);
    let other = Case::new(1, 4, 1, 64, 130, 44);
    let (oks, _) = other.chunks(&[]);
    let mut wrong = KeyBlocks::new();
    wrong.extend(&[&oks[0]]).unwrap();
    let q = t(c.q.clone(), &[c.m, c.heads, c.hd]);
    let call = Attn {
        q: &q,
        q_pos0: c.q_pos0,
        keys: &[&ks[0]],
        values: &[&vs[0]],
        key_blocks: Some(&wrong),
    };
    assert!(attention_many(&[call], c.scale()).is_err());
}
