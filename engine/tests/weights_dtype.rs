//! `engine.weights`: 16-bit weights held as stored compute the f32 bits;
//! `bf16` rounds and says so in the fingerprint; a decode row does not
//! depend on the batch.
use std::path::{Path, PathBuf};

use cake_engine::init::{Dtype, preset, write_checkpoint};
use cake_engine::{BatchItem, Device, Logits, Model, Rng, WeightsDtype};

fn tiny(dtype: Dtype, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_checkpoint(&preset("tiny").unwrap(), seed, dtype, &dir).unwrap();
    (tmp, dir)
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(vocab as u64) as u32).collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Every token's logits of a prompt, then of three decode steps.
fn run(model: &Model, toks: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    let mut out = model.forward(&mut cache, toks).unwrap().into_vec().unwrap();
    for t in [3u32, 1, 4] {
        out.extend(model.forward_last(&mut cache, &[t]).unwrap());
    }
    out
}

fn load(dir: &Path, w: WeightsDtype) -> Model {
    Model::load_with(dir, Device::Cpu, w).unwrap()
}

#[test]
fn sixteen_bit_checkpoints_held_as_stored_give_the_f32_bits() {
    for dtype in [Dtype::Bf16, Dtype::F16] {
        let (_t, dir) = tiny(dtype, 5);
        let kept = load(&dir, WeightsDtype::Auto);
        let wide = load(&dir, WeightsDtype::F32);
        let toks = tokens(40, kept.config().vocab_size, 6);
        assert_eq!(
            bits(&run(&kept, &toks)),
            bits(&run(&wide, &toks)),
            "{dtype:?}"
        );
        // Exact, so the KV is the same and so is the cache namespace.
        assert_eq!(kept.fingerprint(), wide.fingerprint());
        let (a, b) = (kept.step_weight_bytes(), wide.step_weight_bytes());
        assert!(a * 10 < b * 6, "{dtype:?}: {a} bytes held vs {b} as f32");
    }
    // `bf16` on a bf16 checkpoint is the same thing.
    let (_t, dir) = tiny(Dtype::Bf16, 5);
    let toks = tokens(40, 64, 6);
    assert_eq!(
        bits(&run(&load(&dir, WeightsDtype::Bf16), &toks)),
        bits(&run(&load(&dir, WeightsDtype::F32), &toks))
    );
}

#[test]
fn bf16_rounds_an_f32_checkpoint_and_changes_the_fingerprint() {
    let (_t, dir) = tiny(Dtype::F32, 7);
    let f32m = load(&dir, WeightsDtype::Auto);
    let bf = load(&dir, WeightsDtype::Bf16);
    assert_ne!(f32m.fingerprint(), bf.fingerprint());
    assert_eq!(
        f32m.fingerprint(),
        load(&dir, WeightsDtype::F32).fingerprint()
    );
    let toks = tokens(30, f32m.config().vocab_size, 8);
    let (a, b) = (run(&f32m, &toks), run(&bf, &toks));
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst > 0.0 && worst < 0.1 * scale, "{worst} of {scale}");
}

#[test]
fn a_bf16_decode_row_does_not_depend_on_the_batch() {
    let (_t, dir) = tiny(Dtype::F32, 9);
    let model = load(&dir, WeightsDtype::Bf16);
    let v = model.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..8).map(|s| tokens(10 + 3 * s, v, s as u64)).collect();
    let prefilled = || -> Vec<_> {
        prompts
            .iter()
            .map(|p| {
                let mut c = model.new_cache();
                model.prefill(&mut c, p, 16).unwrap();
                c
            })
            .collect()
    };
    // Each stream alone, then batches of 3 and of 8.
    let mut alone = Vec::new();
    for (i, mut c) in prefilled().into_iter().enumerate() {
        alone.push(model.forward_last(&mut c, &[i as u32]).unwrap());
    }
    for batch in [3usize, 8] {
        let mut caches = prefilled();
        let toks: Vec<[u32; 1]> = (0..batch).map(|i| [i as u32]).collect();
        let mut items: Vec<BatchItem<'_>> = caches
            .iter_mut()
            .zip(&toks)
            .map(|(cache, t)| BatchItem {
                cache,
                tokens: t,
                logits: Logits::Last,
            })
            .collect();
        let out = model.forward_batch(&mut items).unwrap();
        for (i, l) in out.into_iter().enumerate() {
            let l = l.unwrap().into_vec().unwrap();
            assert_eq!(
                bits(&l),
                bits(&alone[i]),
                "stream {i} in a batch of {batch}"
            );
        }
    }
}

#[test]
fn gguf_blocks_stay_f32_unless_asked() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/tiny-llama.gguf");
    let auto = load(&path, WeightsDtype::Auto);
    let wide = load(&path, WeightsDtype::F32);
    let bf = load(&path, WeightsDtype::Bf16);
    let toks = tokens(12, auto.config().vocab_size, 2);
    assert_eq!(bits(&run(&auto, &toks)), bits(&run(&wide, &toks)));
    assert_ne!(auto.fingerprint(), bf.fingerprint());
    assert!(bf.step_weight_bytes() < auto.step_weight_bytes());
    assert!(run(&bf, &toks).iter().all(|x| x.is_finite()));
}
