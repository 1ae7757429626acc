//! The special tokens and chat template of a tokenizer folder, read as
//! transformers reads them: `chat_template.jinja` first (transformers >=
//! 4.43 saves the template there), else `tokenizer_config.json`'s
//! `chat_template` (a string, or named templates of which `default` is
//! used); `add_bos_token` as the config says; every EOS id of
//! `generation_config.json` ends a sequence.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use std::path::{Path, PathBuf};

use cake_engine::Tokenizer;
use serde_json::json;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
}

/// A copy of the fixture folder with `tokenizer_config.json` replaced and,
/// unless `jinja`, no `chat_template.jinja`.
fn folder(config: serde_json::Value, jinja: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "generation_config.json"] {
        std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
    }
    if jinja {
        std::fs::copy(
            fixture().join("chat_template.jinja"),
            dir.path().join("chat_template.jinja"),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn the_jinja_file_is_the_template() {
    let tok = Tokenizer::from_file(&fixture()).unwrap();
    let want = std::fs::read_to_string(fixture().join("chat_template.jinja")).unwrap();
    assert_eq!(tok.chat_template().as_deref(), Some(want.as_str()));
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    // eos_token (2) and generation_config's list [2, 0].
    assert_eq!(tok.eos_ids(), vec![0, 2]);
    assert!(!tok.add_bos(), "a GPT-2 style tokenizer adds no BOS");

    // The file wins over a template in the config, as in transformers.
    let dir = folder(
        json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": "old"}),
        true,
    );
    let tok = Tokenizer::from_file(dir.path()).unwrap();
    assert_eq!(tok.chat_template().as_deref(), Some(want.as_str()));
}

#[test]
fn named_templates_use_default_and_add_bos_token_is_read() {
    let dir = folder(
        json!({
            "bos_token": {"content": "<|im_start|>", "special": true},
            "eos_token": "<|im_end|>",
            "add_bos_token": true,
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": "plain"},
            ],
        }),
        false,
    );
    let tok = Tokenizer::from_file(dir.path()).unwrap();
    assert_eq!(tok.chat_template().as_deref(), Some("plain"));
    assert!(tok.add_bos());
    let ids = tok.encode("hi", tok.add_bos()).unwrap();
    assert_eq!(ids[0], 1, "BOS first");
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
}
