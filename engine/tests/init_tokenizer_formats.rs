//! `Tokenizer` on a tokenizer.json of Llama 2's kind (SentencePiece BPE as
//! transformers converts it: `▁` for spaces, byte fallback, a decoder that
//! strips the first space), where streaming must get context right.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use cake_engine::Tokenizer;
use proptest::prelude::*;
use serde_json::json;

use crate::tokenizer_support::{reference_pieces, stream_pieces};

fn llama2_style() -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    let mut next = 0u32;
    let mut add = |t: String| {
        vocab.insert(t, json!(next));
        next += 1;
    };
    for t in ["<unk>", "<s>", "</s>"] {
        add(t.to_string());
    }
    for b in 0..=255u8 {
        add(format!("<0x{b:02X}>"));
    }
    let words = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "ll", "▁hell", "▁hello", "▁w", "or",
        "▁wor", "ld", "▁world",
    ];
    for w in words {
        add(w.to_string());
    }
    let merges = [
        "▁ h",
        "▁h e",
        "l l",
        "▁he ll",
        "▁hell o",
        "▁ w",
        "o r",
        "▁w or",
        "l d",
        "▁wor ld",
    ];
    let special = |id: u32, content: &str| {
        json!({ "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true })
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": { "type": "Sequence", "normalizers": [
            { "type": "Prepend", "prepend": "▁" },
            { "type": "Replace", "pattern": { "String": " " }, "content": "▁" },
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": { "type": "Sequence", "decoders": [
            { "type": "Replace", "pattern": { "String": "▁" }, "content": " " },
            { "type": "ByteFallback" },
            { "type": "Fuse" },
            { "type": "Strip", "content": " ", "start": 1, "stop": 0 },
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    Tokenizer::from_json(&tokenizer.to_string(), None).unwrap()
}

fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    stream_pieces(tok, ids)
}

#[test]
fn sentencepiece_style_tokenizers_round_trip_and_stream() {
    let tok = llama2_style();
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), vec![2]);

    let ids = tok.encode("hello world", true).unwrap();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids[1..]).unwrap(), "hello world");
    // The first word loses its `▁` space, later ones keep it, in a stream too.
    assert_eq!(stream(&tok, &ids[1..]), ["hello", " world", ""]);

    // Characters not in the vocabulary go through byte fallback; a stream
    // shows each only once all its bytes are in.
    let text = "hello 😀 world";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    let pieces = stream(&tok, &ids);
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "{pieces:?}");
    assert!(pieces.contains(&"😀".to_string()), "{pieces:?}");
}

proptest! {
    /// Byte-fallback tokens (`<0xE2>`) in any order, characters split across
    /// them or cut off, `▁` words and the first-space rule: the same pieces
    /// as the decoder this crate had before it used `tokenizers`' streaming
    /// step.
    #[test]
    fn streams_as_before(ids in prop::collection::vec(0u32..300, 0..40), text in "[a-z 😀é→]{0,16}") {
        let tok = llama2_style();
        prop_assert_eq!(stream_pieces(&tok, &ids), reference_pieces(&tok, &ids));
        let ids = tok.encode(&text, false).unwrap();
        prop_assert_eq!(stream_pieces(&tok, &ids), reference_pieces(&tok, &ids));
    }
}
