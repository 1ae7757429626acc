//! The engine against an independent reference: `scripts/llama_ref.py`, a
//! NumPy Llama written from transformers' formulas, run in float64 on the
//! same checkpoint (written by `init`).
//!
//! Tolerance: the largest difference in any logit must be within 1e-3 of
//! the largest logit's magnitude (the engine computes in f32; a wrong
//! formula is off by far more, typically 10-100%).
//!
//! Skips with a message when `python3` or NumPy is missing, unless
//! `CAKE_REQUIRE_REFERENCE=1` (CI sets it), where that is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use std::path::{Path, PathBuf};
use std::process::Command;

use cake_engine::init::{self, Dtype, InitOptions, Preset, Scaling};
use cake_engine::{Device, Model, Rng};

const REL_TOL: f32 = 1e-3;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama_ref.py")
}

/// Whether the reference can run here; panics if it must and cannot.
fn reference_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let why = "python3 with numpy is not available (pip install numpy)";
        if std::env::var("CAKE_REQUIRE_REFERENCE").is_ok_and(|v| v == "1") {
            panic!("CAKE_REQUIRE_REFERENCE=1 but {why}");
        }
        eprintln!("skipping the reference comparison: {why}");
    }
    ok
}

fn reference_logits(dir: &Path, tokens: &[u32]) -> Vec<Vec<f32>> {
    let ids: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let out = Command::new("python3")
        .arg(script())
        .arg(dir)
        .arg(ids.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llama_ref.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

fn compare(what: &str, engine: &[f32], reference: &[Vec<f32>]) {
    let vocab = reference[0].len();
    assert_eq!(
        engine.len(),
        reference.len() * vocab,
        "{what}: logits shape"
    );
    let scale = reference
        .iter()
        .flatten()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(1e-6);
    let mut worst = (0f32, 0, 0);
    for (t, row) in reference.iter().enumerate() {
        for (v, r) in row.iter().enumerate() {
            let d = (engine[t * vocab + v] - r).abs();
            if d > worst.0 {
                worst = (d, t, v);
            }
        }
    }
    let (d, t, v) = worst;
    eprintln!("{what}: max |engine - reference| = {d:.2e} (logit scale {scale:.2})");
    assert!(
        d <= REL_TOL * scale,
        "{what}: token {t}, logit {v}: engine {} vs reference {} (scale {scale})",
        engine[t * vocab + v],
        reference[t][v]
    );
}

/// Writes `preset` in `dtype`, runs `n` tokens through both, compares; also
/// runs them in two calls over one cache and compares the second part.
fn check(what: &str, preset: &Preset, dtype: Dtype, opts: &InitOptions, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    init::write_checkpoint_with(preset, 11, dtype, &out, opts).unwrap();
    let ids = tokens(n, preset.vocab_size, n as u64);
    let reference = reference_logits(&out, &ids);

    let model = Model::load(&out, Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let logits: Vec<f32> = model.forward(&mut cache, &ids).unwrap().to_vec().unwrap();
    compare(what, &logits, &reference);

    let split = n / 3;
    let mut cache = model.new_cache();
    model.forward(&mut cache, &ids[..split]).unwrap();
    let rest: Vec<f32> = model
        .forward(&mut cache, &ids[split..])
        .unwrap()
        .to_vec()
        .unwrap();
    compare(
        &format!("{what}, after {split} cached tokens"),
        &rest,
        &reference[split..],
    );
}

fn tiny() -> Preset {
    init::preset("tiny").unwrap()
}

#[test]
fn tiny_matches_the_reference() {
    if !reference_available() {
        return;
    }
    // Tied embeddings, grouped-query attention, llama3 rope scaling.
    check("tiny f32", &tiny(), Dtype::F32, &InitOptions::default(), 40);
}

#[test]
fn rope_variants_match_the_reference() {
    if !reference_available() {
        return;
    }
    // A short original context puts most frequencies in the smoothed band.
    let llama3 = Preset {
        rope_theta: 500_000.0,
        rope_scaling: Some(Scaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        }),
        ..tiny()
    };
    check(
        "llama3 scaling",
        &llama3,
        Dtype::F32,
        &InitOptions::default(),
        48,
    );
    let plain = Preset {
        rope_scaling: None,
        ..tiny()
    };
    check(
        "no scaling",
        &plain,
        Dtype::F32,
        &InitOptions::default(),
        24,
    );
}

#[test]
fn untied_linear_sharded_bf16_matches_the_reference() {
    if !reference_available() {
        return;
    }
    // LongAlpaca's kind: separate lm_head, linear scaling, one KV head per
    // query head; sharded, in bf16 (both sides compute on the same values).
    let p = Preset {
        tie_word_embeddings: false,
        rope_scaling: Some(Scaling::Linear { factor: 4.0 }),
        num_kv_heads: 4,
        ..tiny()
    };
    let opts = InitOptions {
        shard_bytes: 32 << 10,
        ..InitOptions::default()
    };
    check("untied linear bf16", &p, Dtype::Bf16, &opts, 32);
    check(
        "untied linear f16",
        &p,
        Dtype::F16,
        &InitOptions::default(),
        16,
    );
}
