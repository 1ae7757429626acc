//! Row and elementwise ops against naive references.
#![allow(clippy::unwrap_used)] // test code: a failed call should fail loudly

use crate::common::{Rng, assert_close, bits, t};
use cake_kernels::{RopeScaling, RopeTable, ops};

#[test]
fn rms_norm_matches_naive() {
    let mut rng = Rng::new(1);
    for &(m, d) in &[(1, 1), (3, 7), (40, 256), (17, 1000)] {
        let x = rng.vec(m * d);
        let w = rng.vec(d);
        let got = ops::rms_norm(&t(x.clone(), &[m, d]), &t(w.clone(), &[d]), 1e-5).unwrap();
        let want: Vec<f64> = x
            .chunks(d)
            .flat_map(|row| {
                let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + 1e-5).sqrt();
                row.iter()
                    .zip(&w)
                    .map(move |(&v, &g)| v as f64 * inv * g as f64)
            })
            .collect();
        assert_close(got.as_slice().unwrap(), &want, 1e-5, "rms_norm");
    }
    let x = t(vec![0.0; 6], &[2, 3]);
    assert!(ops::rms_norm(&x, &t(vec![1.0; 4], &[4]), 1e-5).is_err());
}

/// transformers' `_compute_default_rope_parameters` and
/// `_compute_llama3_parameters`, written out in f64.
fn hf_inv_freq(head_dim: usize, theta: f64, s: Option<RopeScaling>) -> Vec<f64> {
    let inv: Vec<f64> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f64 / head_dim as f64))
        .collect();
    let Some(s) = s else { return inv };
    let (factor, lo, hi) = (
        s.factor as f64,
        s.low_freq_factor as f64,
        s.high_freq_factor as f64,
    );
    let old = s.original_max_position_embeddings as f64;
    let (low_wavelen, high_wavelen) = (old / lo, old / hi);
    inv.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let llama = if wavelen > low_wavelen { f / factor } else { f };
            let smooth = (old / wavelen - lo) / (hi - lo);
            let smoothed = (1.0 - smooth) * llama / factor + smooth * llama;
            // `~(wavelen < high) * ~(wavelen > low)` in transformers.
            let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
            if medium { smoothed } else { llama }
        })
        .collect()
}

#[test]
fn rope_frequencies_match_transformers() {
    let plain = RopeTable::new(64, 10_000.0, None);
    assert_close(
        plain.inv_freq(),
        &hf_inv_freq(64, 10_000.0, None),
        1e-6,
        "default",
    );

    // Llama 3.1's values.
    let s = RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let scaled = RopeTable::new(128, 500_000.0, Some(s));
    let want = hf_inv_freq(128, 500_000.0, Some(s));
    let base = hf_inv_freq(128, 500_000.0, None);
    // The three regimes are all exercised: kept, divided, smoothed.
    let kept = want.iter().zip(&base).filter(|(w, b)| w == b).count();
    let divided = want
        .iter()
        .zip(&base)
        .filter(|(w, b)| (*w * 8.0 - *b).abs() < 1e-12 * *b)
        .count();
    assert!(
        kept > 0 && divided > 0 && kept + divided < want.len(),
        "{kept} {divided}"
    );
    // Relative error: the frequencies span ten orders of magnitude.
    for (i, (&g, &w)) in scaled.inv_freq().iter().zip(&want).enumerate() {
        assert!(
            ((g as f64 - w) / w).abs() < 2e-6,
            "inv_freq[{i}] = {g}, transformers {w}"
        );
    }
}

/// Rotate-half rope in f64.
fn rope_naive(x: &[f32], heads: usize, hd: usize, pos0: usize, inv: &[f32]) -> Vec<f64> {
    let half = hd / 2;
    let mut out = vec![0.0; x.len()];
    for (r, row) in x.chunks(heads * hd).enumerate() {
        let pos = (pos0 + r) as f64;
        for (h, v) in row.chunks(hd).enumerate() {
            let o = &mut out[(r * heads + h) * hd..][..hd];
            for i in 0..half {
                let a = pos * inv[i] as f64;
                let (x0, x1) = (v[i] as f64, v[i + half] as f64);
                o[i] = x0 * a.cos() - x1 * a.sin();
                o[i + half] = x1 * a.cos() + x0 * a.sin();
            }
        }
    }
    out
}

#[test]
fn rope_matches_naive_and_keeps_norms() {
    let mut rng = Rng::new(2);
    let scaling = RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    };
    for (scaling, pos0) in [(None, 0), (Some(scaling), 1000)] {
        let table = RopeTable::new(32, 10_000.0, scaling);
        let (m, heads, hd) = (37, 3, 32);
        let x = rng.vec(m * heads * hd);
        let mut got = t(x.clone(), &[m, heads, hd]);
        ops::rope_inplace(&mut got, pos0, &table).unwrap();
        let got = got.into_vec().unwrap();
        // Angles reach ~1000 rad, where f32 rounding of pos·f alone is ~3e-5.
        let want = rope_naive(&x, heads, hd, pos0, table.inv_freq());
        assert_close(&got, &want, 1e-4, "rope");
        for (a, b) in got.chunks(hd).zip(x.chunks(hd)) {
            let n = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            assert!((n(a) - n(b)).abs() < 1e-5 * n(b).max(1.0), "norm changed");
        }
    }
}

#[test]
fn rope_rows_depend_only_on_their_position() {
    let mut rng = Rng::new(3);
    let table = RopeTable::new(16, 10_000.0, None);
    let x = rng.vec(50 * 2 * 16);
    let mut whole = t(x.clone(), &[50, 2, 16]);
    ops::rope_inplace(&mut whole, 7, &table).unwrap();
    let mut tail = t(x[20 * 32..].to_vec(), &[30, 2, 16]);
    ops::rope_inplace(&mut tail, 27, &table).unwrap();
    assert_eq!(
        bits(tail.as_slice().unwrap()),
        bits(&whole.as_slice().unwrap()[20 * 32..])
    );
}

#[test]
fn rope_rejects_mismatched_tables() {
    let table = RopeTable::new(16, 10_000.0, None);
    let mut x = t(vec![0.0; 2 * 8], &[2, 8]);
    assert!(ops::rope_inplace(&mut x, 0, &table).is_err());
    let mut x = t(vec![0.0; 2 * 8], &[1, 2, 8]);
    assert!(ops::rope_inplace(&mut x, 0, &table).is_err());
    let short = RopeTable::from_inv_freq(8, vec![1.0; 3]);
    assert!(ops::rope_inplace(&mut x, 0, &short).is_err());
}

#[test]
fn silu_mul_and_add_match_naive() {
    let mut rng = Rng::new(4);
    let n = 10_001;
    let g: Vec<f32> = rng.vec(n).iter().map(|x| x * 20.0).collect();
    let u = rng.vec(n);
    let got = ops::silu_mul(&t(g.clone(), &[n]), &t(u.clone(), &[n])).unwrap();
    let want: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
        .collect();
    assert_close(got.as_slice().unwrap(), &want, 1e-6, "silu_mul");
    assert!(ops::silu_mul(&t(g.clone(), &[n]), &t(vec![0.0; 3], &[3])).is_err());

    let mut x = t(g.clone(), &[n]);
    ops::add_inplace(&mut x, &t(u.clone(), &[n])).unwrap();
    let want: Vec<f64> = g.iter().zip(&u).map(|(&a, &b)| (a + b) as f64).collect();
    assert_close(x.as_slice().unwrap(), &want, 0.0, "add");
    assert!(ops::add_inplace(&mut x, &t(vec![0.0; 3], &[3])).is_err());
}

#[test]
fn softmax_matches_naive_and_is_stable() {
    let mut rng = Rng::new(5);
    let (m, d) = (9, 333);
    let x: Vec<f32> = rng.vec(m * d).iter().map(|v| v * 50.0 + 1000.0).collect();
    let mut got = t(x.clone(), &[m, d]);
    ops::softmax_inplace(&mut got).unwrap();
    let want: Vec<f64> = x
        .chunks(d)
        .flat_map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            row.iter().map(move |&v| (v as f64 - max).exp() / z)
        })
        .collect();
    assert_close(got.as_slice().unwrap(), &want, 1e-6, "softmax");
    for row in got.as_slice().unwrap().chunks(d) {
        assert!((row.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn embedding_gathers_rows_and_rejects_bad_ids() {
    let table = t((0..12).map(|v| v as f32).collect(), &[4, 3]);
    let got = ops::embedding(&table, &[2, 0, 2]).unwrap();
    assert_eq!(got.shape(), [3, 3]);
    assert_eq!(
        got.to_vec().unwrap(),
        vec![6.0, 7.0, 8.0, 0.0, 1.0, 2.0, 6.0, 7.0, 8.0]
    );
    assert_eq!(ops::embedding(&table, &[]).unwrap().shape(), [0, 3]);
    let err = ops::embedding(&table, &[1, 4]).unwrap_err();
    assert!(err.to_string().contains("token id 4"), "{err}");
    assert!(ops::embedding(&table, &[u32::MAX]).is_err());
    assert!(ops::embedding(&t(vec![0.0; 4], &[4]), &[0]).is_err());
}
