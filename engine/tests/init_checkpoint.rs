//! `cake model init`'s checkpoints: Hugging Face layout, names, shapes,
//! config fields, sharding, space checks, replacing an output folder.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cake_engine::Tokenizer;
use cake_engine::init::{self, Available, Dtype, InitError, InitOptions, Preset};
use safetensors::SafeTensors;
use serde_json::Value;

fn tiny() -> Preset {
    init::preset("tiny").unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every tensor name and shape Hugging Face's Llama has for `p`.
fn expected(p: &Preset) -> BTreeMap<String, Vec<usize>> {
    let (h, q, kv, ff) = (
        p.hidden_size,
        p.num_heads * p.head_dim,
        p.num_kv_heads * p.head_dim,
        p.intermediate_size,
    );
    let mut m = BTreeMap::new();
    m.insert(
        "model.embed_tokens.weight".to_string(),
        vec![p.vocab_size, h],
    );
    m.insert("model.norm.weight".to_string(), vec![h]);
    if !p.tie_word_embeddings {
        m.insert("lm_head.weight".to_string(), vec![p.vocab_size, h]);
    }
    for i in 0..p.num_layers {
        let l = |s: &str| format!("model.layers.{i}.{s}");
        m.insert(l("input_layernorm.weight"), vec![h]);
        m.insert(l("post_attention_layernorm.weight"), vec![h]);
        m.insert(l("self_attn.q_proj.weight"), vec![q, h]);
        m.insert(l("self_attn.k_proj.weight"), vec![kv, h]);
        m.insert(l("self_attn.v_proj.weight"), vec![kv, h]);
        m.insert(l("self_attn.o_proj.weight"), vec![h, q]);
        m.insert(l("mlp.gate_proj.weight"), vec![ff, h]);
        m.insert(l("mlp.up_proj.weight"), vec![ff, h]);
        m.insert(l("mlp.down_proj.weight"), vec![h, ff]);
    }
    m
}

fn values(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    let d = view.data();
    match view.dtype() {
        safetensors::Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

#[test]
fn tiny_loads_back_in_each_dtype() {
    for (dtype, st_dtype, torch) in [
        (Dtype::F32, safetensors::Dtype::F32, "float32"),
        (Dtype::F16, safetensors::Dtype::F16, "float16"),
        (Dtype::Bf16, safetensors::Dtype::BF16, "bfloat16"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tiny");
        let p = tiny();
        let written = init::write_checkpoint(&p, 7, dtype, &out).unwrap();
        assert_eq!(
            written.files,
            [
                "config.json",
                "generation_config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json"
            ]
        );
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let shapes: BTreeMap<String, Vec<usize>> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                assert_eq!(v.dtype(), st_dtype, "{n}");
                (n, v.shape().to_vec())
            })
            .collect();
        assert_eq!(shapes, expected(&p));
        assert_eq!(written.params, p.param_count());

        // Norms are 1; projections N(0, 1/fan_in).
        assert!(
            values(&st.tensor("model.norm.weight").unwrap())
                .iter()
                .all(|&v| v == 1.0)
        );
        let q = values(&st.tensor("model.layers.1.self_attn.q_proj.weight").unwrap());
        let var = q.iter().map(|v| v * v).sum::<f32>() / q.len() as f32;
        assert!(
            (var * p.hidden_size as f32 - 1.0).abs() < 0.1,
            "variance {var}"
        );

        let config = read_json(&out.join("config.json"));
        assert_eq!(config["architectures"][0], "LlamaForCausalLM");
        assert_eq!(config["model_type"], "llama");
        assert_eq!(config["hidden_size"], 64);
        assert_eq!(config["intermediate_size"], 128);
        assert_eq!(config["num_hidden_layers"], 2);
        assert_eq!(config["num_attention_heads"], 4);
        assert_eq!(config["num_key_value_heads"], 2);
        assert_eq!(config["head_dim"], 16);
        assert_eq!(config["vocab_size"], 512);
        assert_eq!(config["max_position_embeddings"], 4096);
        assert_eq!(config["tie_word_embeddings"], true);
        assert_eq!(config["torch_dtype"], torch);
        assert_eq!(config["hidden_act"], "silu");
        assert_eq!(config["attention_bias"], false);
        assert_eq!(config["mlp_bias"], false);
        assert_eq!(config["rope_scaling"]["rope_type"], "llama3");
        assert_eq!(
            config["rope_scaling"]["original_max_position_embeddings"],
            1024
        );

        let tok = Tokenizer::from_file(&out.join("tokenizer.json")).unwrap();
        assert_eq!(tok.vocab_size(), 512);
        assert_eq!(config["bos_token_id"], tok.bos_id().unwrap());
        assert_eq!(config["eos_token_id"], tok.eos_ids()[0]);
        let eos = tok.eos_ids();
        assert_eq!(
            eos.len(),
            2,
            "generation_config.json lists end_of_text and eot_id: {eos:?}"
        );
        assert!(tok.chat_template().is_some());
        let tok_config = read_json(&out.join("tokenizer_config.json"));
        assert_eq!(tok_config["bos_token"], "<|begin_of_text|>");
        assert_eq!(tok_config["model_max_length"], 4096);
    }
}

#[test]
fn big_checkpoints_are_sharded_with_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sharded");
    let p = Preset {
        tie_word_embeddings: false,
        ..tiny()
    };
    let opts = InitOptions {
        shard_bytes: 64 << 10,
        ..InitOptions::default()
    };
    let written = init::write_checkpoint_with(&p, 1, Dtype::F32, &out, &opts).unwrap();
    let index = read_json(&out.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let files: BTreeSet<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(files.len() > 2, "{files:?}");
    let n = files.len();
    for (i, f) in files.iter().enumerate() {
        assert_eq!(*f, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
        assert!(written.files.contains(&f.to_string()));
    }
    assert!(!out.join("model.safetensors").exists());
    let mut seen = BTreeMap::new();
    let mut total = 0u64;
    for f in &files {
        let bytes = std::fs::read(out.join(f)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            assert!(
                view.data().len() <= 64 << 10 || st.len() == 1,
                "{f} over the shard size"
            );
            assert_eq!(
                map[&name], *f,
                "{name} is in {f}, the index says {}",
                map[&name]
            );
            total += view.data().len() as u64;
            seen.insert(name, view.shape().to_vec());
        }
    }
    assert_eq!(seen, expected(&p));
    assert_eq!(index["metadata"]["total_size"], total);
}

#[test]
fn refuses_at_once_when_space_is_short() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big");
    let p = tiny();
    let need = init::checkpoint_bytes(&p, Dtype::F32, 4 << 30).unwrap();
    let opts = InitOptions {
        available: Some(Available {
            disk_bytes: Some(need / 2),
            memory_bytes: None,
        }),
        ..InitOptions::default()
    };
    let err = init::write_checkpoint_with(&p, 1, Dtype::F32, &out, &opts).unwrap_err();
    assert!(matches!(err, InitError::NotEnoughSpace { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("disk space") && msg.contains("needs") && msg.contains("GiB available"),
        "{msg}"
    );
    // Nothing was written, not even a temporary folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let opts = InitOptions {
        available: Some(Available {
            disk_bytes: None,
            memory_bytes: Some(1 << 20),
        }),
        ..InitOptions::default()
    };
    let msg = init::write_checkpoint_with(&p, 1, Dtype::F32, &out, &opts)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("memory"), "{msg}");

    // The real shapes' sizes are what the refusal reports.
    let big = init::preset("llama-3-70b").unwrap();
    let opts = InitOptions {
        available: Some(Available {
            disk_bytes: Some(10 << 30),
            memory_bytes: None,
        }),
        ..InitOptions::default()
    };
    let msg = init::write_checkpoint_with(&big, 1, Dtype::Bf16, &out, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("needs 131.") && msg.contains("10.00 GiB available"),
        "{msg}"
    );
    assert!(!out.exists());
}

#[test]
fn an_existing_folder_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    std::fs::create_dir(&out).unwrap();
    // An empty folder is fine.
    init::write_checkpoint(&tiny(), 1, Dtype::F32, &out).unwrap();
    std::fs::write(out.join("extra.txt"), "mine").unwrap();
    let err = init::write_checkpoint(&tiny(), 2, Dtype::F32, &out).unwrap_err();
    assert!(matches!(err, InitError::OutputExists(_)), "{err}");
    assert!(out.join("extra.txt").exists());
    let opts = InitOptions {
        force: true,
        ..InitOptions::default()
    };
    init::write_checkpoint_with(&tiny(), 2, Dtype::F32, &out, &opts).unwrap();
    assert!(!out.join("extra.txt").exists());
    assert!(out.join("model.safetensors").exists());
    // No temporary or old folders are left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ckpt")]);
}

#[test]
fn presets_have_the_real_models_sizes() {
    for name in init::PRESETS {
        let p = init::preset(name).unwrap();
        p.validate().unwrap();
        assert_eq!(p.name, *name);
        assert!(p.tokenizer_vocab <= p.vocab_size);
    }
    assert!(init::preset("nope").is_none());
    let billions = |n: &str| init::preset(n).unwrap().param_count() as f64 / 1e9;
    assert!(
        (billions("llama-3-8b") - 8.03).abs() < 0.01,
        "{}",
        billions("llama-3-8b")
    );
    assert!(
        (billions("llama-3-70b") - 70.55).abs() < 0.01,
        "{}",
        billions("llama-3-70b")
    );
    assert!(
        (billions("longalpaca-7b") - 6.74).abs() < 0.01,
        "{}",
        billions("longalpaca-7b")
    );
    let tiny = tiny();
    assert!(tiny.num_layers <= 4 && tiny.hidden_size <= 128);
    let small = init::preset("small").unwrap();
    assert_eq!(
        (
            small.num_layers,
            small.hidden_size,
            small.num_heads,
            small.num_kv_heads
        ),
        (4, 256, 4, 2)
    );
    assert_eq!(small.vocab_size, 32_000);
    assert!(small.max_position_embeddings >= 32_768);
}

#[test]
fn bad_presets_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = Preset {
        num_kv_heads: 3,
        ..tiny()
    };
    let msg = init::write_checkpoint(&p, 1, Dtype::F32, &dir.path().join("x"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("num_kv_heads"), "{msg}");
}

#[test]
fn leftovers_of_a_killed_run_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    // A temporary folder of a process that no longer exists (no pid is
    // this large), and the old checkpoint a killed --force run moved aside.
    let tmp = dir.path().join(".m.cake-init-4000000000");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::write(tmp.join("model.safetensors"), "half").unwrap();
    let old = dir.path().join(".m.cake-old-4000000001");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("config.json"), "{}").unwrap();
    // The old checkpoint is put back, so it is not overwritten unasked.
    let err = init::write_checkpoint(&tiny(), 1, Dtype::F32, &out).unwrap_err();
    assert!(matches!(err, InitError::OutputExists(_)), "{err}");
    assert!(out.join("config.json").exists());
    assert!(!tmp.exists() && !old.exists());
}
