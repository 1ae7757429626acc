//! The synthetic tokenizer: exact round trips of any UTF-8 text, special
//! tokens, streaming decode, and the sizes the presets ask for.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use std::sync::OnceLock;

use cake_engine::Tokenizer;
use cake_engine::init;
use proptest::prelude::*;

use crate::tokenizer_support::{reference_pieces, stream_pieces};

/// The `small` preset's tokenizer (32000 tokens), built once.
fn small() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let p = init::preset("small").unwrap();
        let (json, config) =
            init::tokenizer_files(p.tokenizer_vocab, p.max_position_embeddings).unwrap();
        Tokenizer::from_json(&json, Some(&config)).unwrap()
    })
}

fn tiny() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let (json, config) = init::tokenizer_files(512, 4096).unwrap();
        Tokenizer::from_json(&json, Some(&config)).unwrap()
    })
}

fn round_trip(tok: &Tokenizer, text: &str) {
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
    assert_eq!(tok.decode(&ids).unwrap(), text, "ids {ids:?}");
    // Streaming gives the same text, piece by piece.
    let mut stream = tok.decode_stream();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&stream.push(id).unwrap());
    }
    streamed.push_str(&stream.finish().unwrap());
    assert_eq!(streamed, text);
}

/// Text mixing the kinds of characters that trip tokenizers up.
fn mixed_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z]{1,12}",
        "[ \t\n\r]{1,6}",
        "[0-9]{1,8}",
        "[\\p{Han}]{1,5}",
        "[\\p{Cyrillic}]{1,6}",
        "[àéîõüçñßøå]{1,4}",
        prop::sample::select(vec![
            "😀",
            "👍🏽",
            "👨‍👩‍👧",
            "🇫🇷",
            "❤️",
            "\u{0}",
            "\u{7f}",
            "\u{feff}",
            "\u{fffd}"
        ])
        .prop_map(str::to_string),
        "[!-/:-@\\[-`{-~]{1,4}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_string_round_trips(text in any::<String>()) {
        round_trip(small(), &text);
        round_trip(tiny(), &text);
    }

    #[test]
    fn mixed_text_round_trips(text in mixed_text()) {
        round_trip(small(), &text);
    }

    /// Any ids, in any order (byte tokens that are not UTF-8, characters
    /// cut off, ids outside the vocabulary): the same pieces as the
    /// decoder this crate had before it used `tokenizers`' streaming step.
    #[test]
    fn streams_as_before(ids in prop::collection::vec(0u32..4200, 0..40), text in mixed_text()) {
        let tok = tiny();
        prop_assert_eq!(stream_pieces(tok, &ids), reference_pieces(tok, &ids));
        let ids = tok.encode(&text, false).unwrap();
        prop_assert_eq!(stream_pieces(tok, &ids), reference_pieces(tok, &ids));
    }
}

#[test]
fn sizes_match_the_presets() {
    assert_eq!(small().vocab_size(), 32_000);
    assert_eq!(tiny().vocab_size(), 512);
    let names = init::SPECIAL_TOKENS;
    for tok in [small(), tiny()] {
        let n = tok.vocab_size() as u32;
        let first = n - names.len() as u32;
        assert_eq!(tok.bos_id(), Some(first));
        // <|end_of_text|> from tokenizer_config.json.
        assert_eq!(tok.eos_ids(), vec![first + 1]);
        assert!(tok.is_special(first));
        assert!(!tok.is_special(b'a' as u32));
    }
}

#[test]
fn common_english_words_are_single_tokens() {
    let text = "The capital of France is Paris. Please answer the question as clearly as you can.";
    let ids = small().encode(text, false).unwrap();
    let chars_per_token = text.len() as f64 / ids.len() as f64;
    assert!(
        chars_per_token > 3.0,
        "{} tokens for {} chars",
        ids.len(),
        text.len()
    );
}

#[test]
fn bos_is_added_once_and_special_tokens_are_parsed() {
    let tok = small();
    let bos = tok.bos_id().unwrap();
    let ids = tok.encode("hello", true).unwrap();
    assert_eq!(ids[0], bos);
    assert_eq!(&ids[1..], &tok.encode("hello", false).unwrap()[..]);
    let ids = tok.encode("<|begin_of_text|>hello", true).unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == bos).count(), 1);
    let ids = tok.encode("a<|eot_id|>b", false).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(tok.token_text(ids[1]), "<|eot_id|>");
    assert_eq!(tok.decode(&ids).unwrap(), "a<|eot_id|>b");
}

#[test]
fn ids_outside_the_vocabulary_are_skipped() {
    let tok = tiny();
    let mut ids = tok.encode("ok", false).unwrap();
    ids.insert(1, 100_000);
    ids.push(u32::MAX);
    assert_eq!(tok.decode(&ids).unwrap(), "ok");
    assert_eq!(tok.token_text(9_999), "");
    let mut stream = tok.decode_stream();
    assert_eq!(stream.push(9_999).unwrap(), "");
}

#[test]
fn streaming_holds_back_incomplete_characters() {
    let tok = tiny();
    // A rare character: several byte tokens, none valid UTF-8 alone.
    let ids = tok.encode("𝄞", false).unwrap();
    assert!(ids.len() > 1);
    let mut stream = tok.decode_stream();
    for &id in &ids[..ids.len() - 1] {
        assert_eq!(stream.push(id).unwrap(), "");
    }
    assert_eq!(stream.push(ids[ids.len() - 1]).unwrap(), "𝄞");
    // A cut-off character comes out as U+FFFD when the stream ends.
    let mut stream = tok.decode_stream();
    assert_eq!(stream.push(ids[0]).unwrap(), "");
    assert_eq!(stream.finish().unwrap(), "\u{fffd}");
}

#[test]
fn chat_template_is_read_from_the_config() {
    let template = small().chat_template().unwrap();
    assert!(template.contains("add_generation_prompt"));
    assert!(template.contains("<|eot_id|>"));
}

#[test]
fn the_tokenizer_is_the_same_every_time() {
    let a = init::tokenizer_files(600, 4096).unwrap();
    let b = init::tokenizer_files(600, 4096).unwrap();
    assert_eq!(a, b);
    // A smaller vocabulary learns the first merges of a larger one.
    let (small_json, _) = init::tokenizer_files(512, 4096).unwrap();
    let merges = |json: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    };
    let (m_small, m_big) = (merges(&small_json), merges(&a.0));
    assert_eq!(&m_big[..m_small.len()], &m_small[..]);
}
