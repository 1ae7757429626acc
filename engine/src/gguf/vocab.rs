//! The tokenizer a GGUF file carries (`tokenizer.ggml.*`), rebuilt as a
//! `tokenizers` tokenizer that splits text as llama.cpp does:
//!
//! - `gpt2`: byte-level BPE with the file's merges and the pre-tokenizer
//!   that `tokenizer.ggml.pre` names (the regexes of llama.cpp's
//!   `llama-vocab.cpp`, written as Hugging Face's tokenizers spell them);
//! - `llama`: SentencePiece BPE (`▁` for spaces, byte fallback), with the
//!   merges implied by the pieces' order, as transformers derives them.
//!
//! Control tokens (and the unknown token) are special; user-defined ones
//! are added tokens, matched in text as a whole.

use serde_json::{Value, json};

use super::file::{GgufFile, Meta};
use crate::EngineError;
use crate::tokenizer::Parts;

/// llama.cpp's token types.
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn tok_err(file: &GgufFile, reason: String) -> EngineError {
    EngineError::Tokenizer(format!("{}: {reason}", file.path().display()))
}

fn byte_level(use_regex: bool) -> Value {
    json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex })
}

fn split(pattern: &str) -> Value {
    json!({ "type": "Split", "pattern": { "Regex": pattern }, "behavior": "Isolated", "invert": false })
}

/// The pre-tokenizer for `pre`, and whether the model ignores merges for
/// whole words in the vocabulary (Llama 3) — `None` for an unknown name.
fn pre_tokenizer(pre: &str) -> Option<(Value, bool)> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "jais" | "olmo"
        | "poro-chat" | "viking" | "bloom" | "gpt3-finnish" => (byte_level(true), false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => (
            json!({ "type": "Sequence", "pretokenizers": [
                { "type": "Digits", "individual_digits": true },
                byte_level(true),
            ]}),
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => (
            json!({ "type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)] }),
            true,
        ),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" => (
            json!({ "type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)] }),
            false,
        ),
        _ => return None,
    })
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, EngineError> {
    let arr = file
        .get(key)
        .and_then(Meta::as_array)
        .ok_or_else(|| tok_err(file, format!("no `{key}` array in the metadata")))?;
    arr.iter()
        .map(|m| {
            m.as_str()
                .ok_or_else(|| tok_err(file, format!("`{key}` holds a non-string")))
        })
        .collect()
}

fn added(id: usize, content: &str, special: bool) -> Value {
    json!({ "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special })
}

/// SentencePiece merges, from the pieces alone: every split of a piece
/// into two pieces of the vocabulary is a merge, ranked by the merged
/// piece's id (SentencePiece orders pieces by score), then by the parts'.
fn spm_merges(tokens: &[&str], usable: &[bool]) -> Vec<Value> {
    let index: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| usable[*i])
        .map(|(i, t)| (*t, i))
        .collect();
    let mut merges = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !usable[id] {
            continue;
        }
        for (k, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(k);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((id, li, ri));
            }
        }
    }
    merges.sort_unstable();
    merges
        .into_iter()
        .map(|(_, l, r)| json!([tokens[l], tokens[r]]))
        .collect()
}

/// The tokenizer parts of a GGUF file.
pub fn tokenizer_parts(file: &GgufFile) -> Result<Parts, EngineError> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Meta::as_str)
        .ok_or_else(|| tok_err(file, "no `tokenizer.ggml.model` in the metadata".into()))?;
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match file
        .get("tokenizer.ggml.token_type")
        .and_then(Meta::as_array)
    {
        Some(a) => a
            .iter()
            .map(|m| m.as_u64().map_or(1, |v| v as i64))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let ty = |i: usize| types.get(i).copied().unwrap_or(1);
    let mut added_tokens = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match ty(i) {
            TYPE_CONTROL | TYPE_UNKNOWN => added_tokens.push(added(i, t, true)),
            TYPE_USER_DEFINED => added_tokens.push(added(i, t, false)),
            _ => {}
        }
    }
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let meta_bool = |k: &str| file.get(k).and_then(Meta::as_bool);
    let id_of = |k: &str| {
        file.get(&format!("tokenizer.ggml.{k}"))
            .and_then(Meta::as_u64)
            .map(|v| v as usize)
            .filter(|&v| v < tokens.len())
    };
    let (json, default_bos) = match model {
        "gpt2" => {
            let pre = file
                .get("tokenizer.ggml.pre")
                .and_then(Meta::as_str)
                .unwrap_or("default");
            let (pre_tok, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
                tok_err(
                    file,
                    format!("pre-tokenizer `{pre}` (tokenizer.ggml.pre) is not supported"),
                )
            })?;
            let merges: Vec<Value> = strings(file, "tokenizer.ggml.merges")?
                .into_iter()
                .map(|m| match m.split_once(' ') {
                    Some((a, b)) => Ok(json!([a, b])),
                    None => Err(tok_err(file, format!("merge `{m}` has no space"))),
                })
                .collect::<Result<_, _>>()?;
            let j = json!({
                "version": "1.0", "truncation": null, "padding": null,
                "added_tokens": added_tokens,
                "normalizer": null,
                "pre_tokenizer": pre_tok,
                "post_processor": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true },
                "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
                "model": { "type": "BPE", "dropout": null, "unk_token": null,
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                    "vocab": vocab, "merges": merges },
            });
            (j, ignore_merges)
        }
        "llama" => {
            let usable: Vec<bool> = (0..tokens.len())
                .map(|i| !matches!(ty(i), TYPE_CONTROL | TYPE_UNKNOWN | 6))
                .collect();
            let merges = spm_merges(&tokens, &usable);
            let mut normalizers = Vec::new();
            if meta_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true) {
                normalizers.push(json!({ "type": "Prepend", "prepend": "▁" }));
            }
            normalizers
                .push(json!({ "type": "Replace", "pattern": { "String": " " }, "content": "▁" }));
            let unk = id_of("unknown_token_id").map(|i| tokens[i]);
            let j = json!({
                "version": "1.0", "truncation": null, "padding": null,
                "added_tokens": added_tokens,
                "normalizer": { "type": "Sequence", "normalizers": normalizers },
                "pre_tokenizer": null,
                "post_processor": null,
                "decoder": { "type": "Sequence", "decoders": [
                    { "type": "Replace", "pattern": { "String": "▁" }, "content": " " },
                    { "type": "ByteFallback" },
                    { "type": "Fuse" },
                    { "type": "Strip", "content": " ", "start": 1, "stop": 0 },
                ]},
                "model": { "type": "BPE", "dropout": null, "unk_token": unk,
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab, "merges": merges },
            });
            (j, true)
        }
        other => {
            return Err(tok_err(
                file,
                format!(
                    "tokenizer model `{other}` (tokenizer.ggml.model) is not supported (gpt2, llama are)"
                ),
            ));
        }
    };
    let tok: tokenizers::Tokenizer = serde_json::from_value(json)
        .map_err(|e| tok_err(file, format!("cannot build the tokenizer: {e}")))?;
    let name = |k: &str| id_of(k).map(|i| tokens[i].to_string());
    let eos_ids = ["eot_token_id", "eom_token_id"]
        .iter()
        .filter_map(|k| id_of(k).map(|i| i as u32))
        .collect();
    Ok(Parts {
        tok,
        bos_token: name("bos_token_id"),
        eos_token: name("eos_token_id"),
        eos_ids,
        add_bos: Some(meta_bool("tokenizer.ggml.add_bos_token").unwrap_or(default_bos)),
        chat_template: file
            .get("tokenizer.chat_template")
            .and_then(Meta::as_str)
            .map(str::to_string),
    })
}
