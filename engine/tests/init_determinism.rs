//! Same preset, seed and dtype → the same bytes, whatever the threads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use std::collections::BTreeMap;
use std::path::Path;

use cake_engine::init::{self, Dtype, InitOptions};

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn write(seed: u64, threads: usize, dtype: Dtype) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let p = init::preset("tiny").unwrap();
    let opts = InitOptions {
        threads,
        ..InitOptions::default()
    };
    init::write_checkpoint_with(&p, seed, dtype, &out, &opts).unwrap();
    files(&out)
}

#[test]
fn same_seed_same_bytes() {
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let a = write(42, 1, dtype);
        let b = write(42, 4, dtype);
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, bytes) in &a {
            assert!(
                bytes == &b[name],
                "{name} differs between two runs with seed 42"
            );
        }
    }
}

#[test]
fn another_seed_other_weights_same_tokenizer() {
    let a = write(1, 0, Dtype::F32);
    let b = write(2, 0, Dtype::F32);
    assert_ne!(a["model.safetensors"], b["model.safetensors"]);
    assert_eq!(a["model.safetensors"].len(), b["model.safetensors"].len());
    for same in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(a[same], b[same], "{same}");
    }
}

#[test]
fn blocks_split_across_threads_give_the_same_tensor() {
    // A tensor of several generation blocks (1 Mi elements each), written
    // with one thread and with three.
    let p = init::Preset {
        vocab_size: 40_000,
        tokenizer_vocab: 512,
        hidden_size: 64,
        num_layers: 1,
        ..init::preset("tiny").unwrap()
    };
    let run = |threads| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m");
        let opts = InitOptions {
            threads,
            ..InitOptions::default()
        };
        init::write_checkpoint_with(&p, 9, Dtype::F16, &out, &opts).unwrap();
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    assert!(run(1) == run(3));
}
