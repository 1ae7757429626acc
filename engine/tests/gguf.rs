//! GGUF checkpoints and the Qwen variants: every tensor type dequantized
//! bitwise as the `gguf` package's NumPy code does, errors that name the
//! tensor and its type, a tiny Llama GGUF (mixed tensor types, a byte-level
//! BPE tokenizer, a chat template), and tiny Qwen2 and Qwen3 models (as
//! Hugging Face folders and as GGUF files) against the logits of
//! `scripts/llama_ref.py`. The fixtures are written by
//! `scripts/gguf_fixtures.py` and committed, so this needs no Python.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use std::path::{Path, PathBuf};

use cake_engine::gguf::{GgmlType, GgufFile, dequantize};
use cake_engine::{Device, Model, Tokenizer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn f32s(file: &GgufFile, name: &str) -> Vec<f32> {
    let t = file.tensor(name).unwrap();
    let mut out = Vec::new();
    dequantize(
        GgmlType::from_id(t.type_id).unwrap(),
        file.data(t),
        &mut out,
    );
    out
}

#[test]
fn every_block_type_dequantizes_as_the_reference() {
    let file = GgufFile::open(&fixture("blocks.gguf")).unwrap();
    for ty in [
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K",
    ] {
        let t = file.tensor(ty).unwrap();
        assert_eq!(t.type_name(), ty);
        let got = f32s(&file, ty);
        let want = f32s(&file, &format!("{ty}.expected"));
        assert_eq!(got.len(), 512, "{ty}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{ty} element {i}: {g} vs {w}");
        }
    }
}

fn write_temp(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn a_truncated_file_names_the_tensor() {
    let bytes = std::fs::read(fixture("tiny-llama.gguf")).unwrap();
    let (_d, path) = write_temp(&bytes[..bytes.len() - 100]);
    let e = GgufFile::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("truncated") && e.contains("output.weight"),
        "{e}"
    );
    assert!(e.contains("Q6_K"), "{e}");
    let (_d, path) = write_temp(&bytes[..1000]);
    let e = GgufFile::open(&path).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
    let (_d, path) = write_temp(b"GGUF\x09\0\0\0");
    let e = GgufFile::open(&path).unwrap_err().to_string();
    assert!(e.contains("version 9"), "{e}");
}

/// `tiny-llama.gguf` with the metadata string `from` replaced by `to`
/// (of the same length), so a test can break one thing.
fn patched(from: &[u8], to: &[u8]) -> (tempfile::TempDir, PathBuf) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(fixture("tiny-llama.gguf")).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("string in the fixture");
    bytes[at..at + to.len()].copy_from_slice(to);
    write_temp(&bytes)
}

#[test]
fn unsupported_architecture_and_types_are_named() {
    let (_d, path) = patched(b"\x05\0\0\0\0\0\0\0llama", b"\x05\0\0\0\0\0\0\0gemma");
    let e = Model::load(&path, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("architecture `gemma`"), "{e}");

    // The first tensor's type field follows its name, dims and count.
    let mut bytes = std::fs::read(fixture("tiny-llama.gguf")).unwrap();
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let type_at = at + 4 + 2 * 8;
    assert_eq!(bytes[type_at], 8, "Q8_0");
    bytes[type_at] = 10; // Q2_K
    let (_d, path) = write_temp(&bytes);
    let e = Model::load(&path, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("token_embd.weight") && e.contains("Q2_K"), "{e}");
}

#[test]
fn a_shape_mismatch_names_the_tensor_and_type() {
    // Claim a wider feed-forward than the tensors have.
    let key = b"llama.feed_forward_length";
    let mut bytes = std::fs::read(fixture("tiny-llama.gguf")).unwrap();
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // u32 type tag, then the value 512.
    assert_eq!(&bytes[at + 4..at + 8], &512u32.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&768u32.to_le_bytes());
    let (_d, path) = write_temp(&bytes);
    let e = Model::load(&path, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("blk.0.ffn_gate.weight (Q4_1)"), "{e}");
    assert!(e.contains("[512, 256], expected [768, 256]"), "{e}");
}

/// Runs the ids of fixture `json` through the model at `path` and checks
/// its logits against the reference's: the largest difference within 1e-3
/// of the largest logit's magnitude (as `reference.rs`).
fn matches_reference(path: &Path, json: &str) -> Model {
    let fix: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(json)).unwrap()).unwrap();
    let ids: Vec<u32> = fix["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<Vec<f32>> = fix["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let model = Model::load(path, Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let got: Vec<f32> = model.forward(&mut cache, &ids).unwrap().to_vec().unwrap();
    let vocab = want[0].len();
    assert_eq!(got.len(), ids.len() * vocab);
    let peak = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    let mut worst = 0f32;
    for (row, w) in want.iter().enumerate() {
        for (j, x) in w.iter().enumerate() {
            worst = worst.max((got[row * vocab + j] - x).abs());
        }
    }
    eprintln!("{json}: max |engine - reference| = {worst:.2e} (peak {peak:.2})");
    assert!(
        worst <= 1e-3 * peak,
        "{json}: largest logit difference {worst} (peak {peak})"
    );
    model
}

#[test]
fn tiny_llama_matches_the_reference() {
    let model = matches_reference(&fixture("tiny-llama.gguf"), "tiny-llama.json");
    let c = model.config();
    assert_eq!((c.hidden_size, c.num_layers, c.vocab_size), (256, 2, 320));
    assert!(!c.tie_word_embeddings && !c.attention_bias && !c.qk_norm);
}

#[test]
fn llama_3_1_rope_factors_are_applied() {
    // `rope_freqs.weight` divides each rotary pair's frequency (factors 1
    // to 8 here): without them the logits are far off.
    let model = matches_reference(&fixture("tiny-llama31.gguf"), "tiny-llama31.gguf.json");
    assert_eq!(model.config().head_dim, 16);
}

#[test]
fn tiny_qwen2_matches_the_reference() {
    for (path, json) in [
        ("tiny-qwen2", "tiny-qwen2.json"),
        ("tiny-qwen2.gguf", "tiny-qwen2.gguf.json"),
    ] {
        let model = matches_reference(&fixture(path), json);
        let c = model.config();
        assert!(
            c.attention_bias && !c.qk_norm && c.tie_word_embeddings,
            "{path}"
        );
    }
}

#[test]
fn tiny_qwen3_matches_the_reference() {
    for (path, json) in [
        ("tiny-qwen3", "tiny-qwen3.json"),
        ("tiny-qwen3.gguf", "tiny-qwen3.gguf.json"),
    ] {
        let model = matches_reference(&fixture(path), json);
        let c = model.config();
        assert!(!c.attention_bias && c.qk_norm, "{path}");
        assert_eq!(
            (c.head_dim, c.num_heads),
            (32, 4),
            "{path}: head_dim is not hidden/heads"
        );
    }
}

#[test]
fn tiny_llama_tokenizer_and_template() {
    let tok = Tokenizer::load(&fixture("tiny-llama.gguf")).unwrap();
    assert_eq!(tok.vocab_size(), 320);
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(tok.eos_ids(), vec![2]);
    assert!(!tok.add_bos());
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    // Byte-level BPE: any text round-trips, merges apply, specials parse.
    for s in ["the cat is on the mat", "héllo wörld 🦀", "a\n\n  b\t"] {
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), s);
    }
    let ids = tok.encode("<|im_start|>user\n the", false).unwrap();
    assert_eq!(ids[0], 1);
    let the = ids.last().copied().unwrap();
    assert_eq!(tok.token_text(the), " the");
    assert!(tok.is_special(1));
    // The `smollm` pre-tokenizer splits every digit: "2024" is 4 tokens,
    // as is the digits' byte tokens.
    assert_eq!(tok.encode("2024", false).unwrap().len(), 4);
}

#[test]
fn sentencepiece_vocabularies_merge_by_score_and_fall_back_to_bytes() {
    let tok = Tokenizer::load(&fixture("tiny-spm.gguf")).unwrap();
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), vec![2]);
    assert!(tok.add_bos(), "SentencePiece models start with BOS");
    let ids = tok.encode("hello world", tok.add_bos()).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.token_text(i)).collect();
    // `▁hello` (id 271) and `▁world` (id 276): the merges the pieces'
    // order implies, a space before every word.
    assert_eq!(ids, vec![1, 271, 276], "{pieces:?}");
    assert_eq!(tok.decode(&ids[1..]).unwrap(), "hello world");
    // A character outside the vocabulary is its UTF-8 bytes.
    let ids = tok.encode("hé", false).unwrap();
    assert_eq!(ids, vec![267, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(tok.decode(&ids).unwrap(), "hé");
}
