//! Tokenizing no more than the limit needs: a prompt far over it costs
//! time and memory in proportion to the limit, not to the body. Growing
//! prefixes of the text, cut at whitespace (or at least at a character
//! boundary), are tokenized until one is clearly over the limit — then
//! the prompt is refused — or the prefix is the whole text, which is then
//! tokenized exactly as it always was.

use cake_engine::{EngineError, Tokenizer};

/// What a bounded encode found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bounded {
    /// The whole text's ids (possibly over the limit by a little: the
    /// caller's length checks decide).
    Whole(Vec<u32>),
    /// A prefix alone already has `counted` tokens, more than the limit.
    Over { counted: usize },
}

/// Tokens a prefix must exceed the limit by before the whole text is
/// judged over it: near the cut, the prefix's last word may split into
/// more tokens than it does inside the full text.
const MARGIN: usize = 64;

/// Bytes of the first prefix per token of the limit; tokens of natural
/// text average 3-5 bytes, so a prompt near the limit is usually
/// tokenized once, whole.
const BYTES_PER_TOKEN: usize = 8;

/// The first prefix is never shorter than this.
const MIN_PREFIX: usize = 64 << 10;

/// How far back from a cut to look for whitespace.
const WHITESPACE_WINDOW: usize = 1024;

/// A cut at or before `at`: just before whitespace if there is some
/// within [`WHITESPACE_WINDOW`] bytes, else at a character boundary.
fn cut_point(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let from = end.saturating_sub(WHITESPACE_WINDOW);
    let bytes = text.as_bytes();
    // ASCII whitespace only: it is one byte, so the cut is a char boundary.
    match (from..end).rev().find(|&i| bytes[i].is_ascii_whitespace()) {
        Some(i) if i > 0 => i,
        _ => end,
    }
}

/// `text`'s ids as [`Tokenizer::encode`] gives them, or [`Bounded::Over`]
/// as soon as a prefix shows the text is over `limit` tokens.
pub(crate) fn encode_bounded(
    tok: &Tokenizer,
    text: &str,
    add_bos: bool,
    limit: usize,
) -> Result<Bounded, EngineError> {
    let mut want = limit
        .saturating_add(MARGIN)
        .saturating_mul(BYTES_PER_TOKEN)
        .max(MIN_PREFIX);
    loop {
        if want >= text.len() {
            return Ok(Bounded::Whole(tok.encode(text, add_bos)?));
        }
        let cut = cut_point(text, want);
        let ids = tok.encode(&text[..cut], add_bos)?;
        if ids.len() > limit.saturating_add(MARGIN) {
            return Ok(Bounded::Over { counted: ids.len() });
        }
        want = want.saturating_mul(2);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        crate::bench::synthetic_model("t", 512, 1024)
            .unwrap()
            .tokenizer
    }

    #[test]
    fn cuts_before_whitespace_or_at_a_char_boundary() {
        assert_eq!(cut_point("hello world", 8), 5);
        // No whitespace: a char boundary at or before the point.
        let s = "ééééé";
        let c = cut_point(s, 3);
        assert!(s.is_char_boundary(c) && c <= 3, "{c}");
        assert_eq!(cut_point("abc", 10), 3);
    }

    #[test]
    fn under_the_limit_tokenizes_exactly_as_encode() {
        let tok = tokenizer();
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(4000)
            + "ünïcödé 漢字 \u{1F600} end";
        let want = tok.encode(&text, true).unwrap();
        for limit in [want.len(), want.len() + 1, want.len() * 2] {
            assert_eq!(
                encode_bounded(&tok, &text, true, limit).unwrap(),
                Bounded::Whole(want.clone())
            );
        }
    }

    #[test]
    fn far_over_the_limit_stops_at_a_prefix() {
        let tok = tokenizer();
        let text = "lorem ipsum dolor sit amet ".repeat(300_000); // ~8 MB
        match encode_bounded(&tok, &text, true, 4096).unwrap() {
            Bounded::Over { counted } => {
                assert!(counted > 4096, "{counted}");
                // A prefix proportional to the limit, not the text.
                assert!(counted < 200_000, "{counted}");
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn just_over_the_limit_is_whole_and_counted_exactly() {
        let tok = tokenizer();
        let text = "a b c d e f g h ".repeat(20_000);
        let n = tok.encode(&text, true).unwrap().len();
        // The caller sees the exact count and refuses with it.
        match encode_bounded(&tok, &text, true, n - 1).unwrap() {
            Bounded::Whole(ids) => assert_eq!(ids.len(), n),
            Bounded::Over { counted } => assert!(counted > n - 1),
        }
    }
}
