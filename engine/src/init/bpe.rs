//! The synthetic models' tokenizer: byte-level BPE, as GPT-2 and Llama 3
//! use, so that every UTF-8 string (every byte string, in fact) encodes and
//! decodes back exactly.
//!
//! Vocabulary, in id order: the 256 single bytes (id = byte value), then
//! tokens learned by merging the most frequent adjacent pair, over and over,
//! on the fixed corpus of [`super::corpus`], until the vocabulary is full;
//! then the special tokens. The trainer is ours (a few dozen lines, ties
//! broken by pair ids), so a given size always gives the same file.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use serde_json::{Map, Value, json};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use super::{InitError, corpus};

/// Special tokens, appended after the learned ones, in this order.
pub const SPECIAL_TOKENS: &[&str] = &[
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];
pub const BOS: &str = "<|begin_of_text|>";
pub const EOS: &str = "<|end_of_text|>";
pub const EOT: &str = "<|eot_id|>";

/// Llama 3's chat format, simplified.
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>\
{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// Id of special token `name` in a tokenizer of `vocab` tokens.
pub(crate) fn special_id(vocab: usize, name: &str) -> u32 {
    let pos = SPECIAL_TOKENS.iter().position(|s| *s == name).unwrap_or(0);
    (vocab - SPECIAL_TOKENS.len() + pos) as u32
}

/// GPT-2's map from bytes to printable characters, which byte-level BPE
/// vocabularies are written in.
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('?');
    }
    out
}

type Pair = (u32, u32);

/// A fast hasher for pairs of small ids (no DoS concern: the input is ours).
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0.rotate_left(32) ^ v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type PairMap<V> = HashMap<Pair, V, BuildHasherDefault<PairHasher>>;

/// Learns merges on `words` (byte strings with counts) until there are
/// `n_tokens` distinct tokens, bytes included. Returns the merges in
/// order and the bytes of every token by id.
fn train(words: &[(Vec<u8>, u64)], n_tokens: usize) -> (Vec<Pair>, Vec<Vec<u8>>) {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut ids: HashMap<Vec<u8>, u32> = tokens.iter().cloned().zip(0..).collect();
    let mut syms: Vec<Vec<u32>> = words
        .iter()
        .map(|(w, _)| w.iter().map(|&b| b as u32).collect())
        .collect();
    let counts: Vec<i64> = words.iter().map(|(_, c)| *c as i64).collect();
    let mut pair_count: PairMap<i64> = PairMap::default();
    let mut pair_words: PairMap<Vec<u32>> = PairMap::default();
    for (wi, w) in syms.iter().enumerate() {
        for p in w.windows(2) {
            *pair_count.entry((p[0], p[1])).or_insert(0) += counts[wi];
            let list = pair_words.entry((p[0], p[1])).or_default();
            if list.last() != Some(&(wi as u32)) {
                list.push(wi as u32);
            }
        }
    }
    // Highest count first; among equal counts, the smaller pair.
    let mut heap: BinaryHeap<(i64, Reverse<Pair>)> =
        pair_count.iter().map(|(&p, &c)| (c, Reverse(p))).collect();
    let mut merges = Vec::new();
    let mut touched: Vec<Pair> = Vec::new();
    while tokens.len() < n_tokens {
        let Some((count, Reverse(pair))) = heap.pop() else {
            break;
        };
        if pair_count.get(&pair) != Some(&count) || count <= 0 {
            continue; // stale entry: a fresher one is in the heap
        }
        let mut bytes = tokens[pair.0 as usize].clone();
        bytes.extend_from_slice(&tokens[pair.1 as usize]);
        let new = match ids.entry(bytes) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                tokens.push(e.key().clone());
                *e.insert(tokens.len() as u32 - 1)
            }
        };
        merges.push(pair);
        touched.clear();
        for wi in pair_words.remove(&pair).unwrap_or_default() {
            let w = &mut syms[wi as usize];
            let c = counts[wi as usize];
            let mut i = 0;
            // Merge left to right, updating only the pairs around each
            // merge (as Hugging Face's trainer does).
            while i + 1 < w.len() {
                if (w[i], w[i + 1]) != pair {
                    i += 1;
                    continue;
                }
                let mut change = |p: Pair, d: i64| {
                    *pair_count.entry(p).or_insert(0) += d;
                    touched.push(p);
                };
                change(pair, -c);
                if i > 0 {
                    change((w[i - 1], pair.0), -c);
                    change((w[i - 1], new), c);
                    pair_words.entry((w[i - 1], new)).or_default().push(wi);
                }
                if i + 2 < w.len() {
                    change((pair.1, w[i + 2]), -c);
                    change((new, w[i + 2]), c);
                    pair_words.entry((new, w[i + 2])).or_default().push(wi);
                }
                w[i] = new;
                w.remove(i + 1);
                i += 1;
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for p in &touched {
            match pair_count.get(p) {
                Some(&c) if c > 0 => heap.push((c, Reverse(*p))),
                Some(_) => {
                    pair_count.remove(p);
                }
                None => {}
            }
        }
    }
    (merges, tokens)
}

/// Cuts the embedded text the way the tokenizer's pre-tokenizer will.
fn text_pieces() -> Result<Vec<String>, InitError> {
    let byte_level = ByteLevel::new(false, true, true);
    let mut pts = PreTokenizedString::from(corpus::text());
    byte_level
        .pre_tokenize(&mut pts)
        .map_err(|e| InitError::Tokenizer(e.to_string()))?;
    let inverse: HashMap<char, u8> = byte_chars()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect();
    Ok(pts
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(piece, _, _)| {
            let bytes: Vec<u8> = piece
                .chars()
                .filter_map(|c| inverse.get(&c).copied())
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect())
}

/// The `tokenizer.json` of a byte-level BPE tokenizer with `vocab` tokens
/// (special tokens included), as a JSON value.
pub(crate) fn tokenizer_json(vocab: usize) -> Result<Value, InitError> {
    let learned = vocab
        .checked_sub(SPECIAL_TOKENS.len())
        .filter(|&n| n >= 256)
        .ok_or_else(|| {
            InitError::Tokenizer(format!(
                "a vocabulary of {vocab} has no room for 256 bytes and the special tokens"
            ))
        })?;
    // Enough made-up words that the corpus holds more merges than needed.
    let words = corpus::pre_tokens(learned.max(2000), text_pieces()?.into_iter());
    let (merges, tokens) = train(&words, learned);
    if tokens.len() < learned {
        return Err(InitError::Tokenizer(format!(
            "the corpus yields only {} tokens, {learned} wanted",
            tokens.len()
        )));
    }
    let chars = byte_chars();
    let text = |id: u32| -> String {
        tokens[id as usize]
            .iter()
            .map(|&b| chars[b as usize])
            .collect()
    };
    let mut vocab_map = Map::new();
    for id in 0..tokens.len() as u32 {
        vocab_map.insert(text(id), json!(id));
    }
    let merges: Vec<Value> = merges
        .iter()
        .map(|&(a, b)| Value::String(format!("{} {}", text(a), text(b))))
        .collect();
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .map(|s| {
            json!({
                "id": special_id(vocab, s), "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true,
            })
        })
        .collect();
    let bos_id = special_id(vocab, BOS);
    let bos = |seq: &str| {
        json!([
            { "SpecialToken": { "id": BOS, "type_id": 0 } },
            { "Sequence": { "id": seq, "type_id": 0 } },
        ])
    };
    let mut pair = bos("A");
    if let (Value::Array(p), Value::Array(b)) = (&mut pair, bos("B")) {
        p.extend(b);
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": bos("A"),
            "pair": pair,
            "special_tokens": { BOS: { "id": BOS, "ids": [bos_id], "tokens": [BOS] } },
        },
        "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab_map,
            "merges": merges,
        },
    }))
}

/// `tokenizer_config.json` for the tokenizer above.
pub(crate) fn tokenizer_config(vocab: usize, context: usize) -> Value {
    let mut decoder = Map::new();
    for s in SPECIAL_TOKENS {
        decoder.insert(
            special_id(vocab, s).to_string(),
            json!({ "content": s, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true }),
        );
    }
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": context,
        "clean_up_tokenization_spaces": false,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": decoder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_chars_are_distinct_and_printable() {
        let chars = byte_chars();
        let set: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[b'a' as usize], 'a');
    }

    #[test]
    fn training_merges_the_most_frequent_pair_first() {
        let words = vec![
            (b"abab".to_vec(), 10),
            (b"cd".to_vec(), 3),
            (b"ab".to_vec(), 1),
        ];
        let (merges, tokens) = train(&words, 258);
        let ab = (b'a' as u32, b'b' as u32);
        assert_eq!(merges[0], ab);
        assert_eq!(tokens[256], b"ab".to_vec());
        assert_eq!(tokens[257], b"abab".to_vec());
    }
}
