//! The streaming decoder `Tokenizer::decode_stream` had before it ran on
//! `tokenizers`' own streaming step, kept as a reference: the pieces a
//! stream gives must stay the same, piece by piece.

use cake_engine::Tokenizer;

/// The pieces the former decoder gave for `ids`, then what `finish` gave.
pub fn reference_pieces(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut all: Vec<u32> = Vec::new();
    let (mut prefix_offset, mut read_offset) = (0, 0);
    let mut pieces = Vec::new();
    for &id in ids {
        if (id as usize) >= tok.vocab_size() {
            pieces.push(String::new());
            continue;
        }
        all.push(id);
        let prefix = tok.decode(&all[prefix_offset..read_offset]).unwrap();
        let text = tok.decode(&all[prefix_offset..]).unwrap();
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') && text.starts_with(&prefix) {
            pieces.push(text[prefix.len()..].to_string());
            prefix_offset = read_offset;
            read_offset = all.len();
        } else {
            pieces.push(String::new());
        }
    }
    let prefix = tok.decode(&all[prefix_offset..read_offset]).unwrap();
    let text = tok.decode(&all[prefix_offset..]).unwrap();
    pieces.push(text.strip_prefix(&prefix).unwrap_or_default().to_string());
    pieces
}

/// The pieces `Tokenizer::decode_stream` gives for `ids`, then `finish`.
pub fn stream_pieces(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut s = tok.decode_stream();
    let mut pieces: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
    pieces.push(s.finish().unwrap());
    pieces
}
