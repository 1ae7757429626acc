//! The fixed corpus the synthetic tokenizer's merges are learned from:
//! a short embedded English text (so common English words are single
//! tokens and English prompts tokenize at a realistic rate) plus words of a
//! seeded made-up language, numbers, code punctuation, indentation, and
//! runs of accented Latin, Cyrillic, CJK and emoji (so common multi-byte
//! characters become single tokens).
//!
//! The seed is a constant: the tokenizer depends only on its size, never
//! on the model's seed.

use std::collections::BTreeMap;

use crate::Rng;

const SEED: u64 = 0x00C0_FFEE_CA4E;

/// Copies of the embedded text counted, so its words outrank made-up ones.
const TEXT_WEIGHT: u64 = 40;

const TEXT: &str = "\
The quick brown fox jumps over the lazy dog. A language model reads a prompt, \
one token at a time, and writes the next token. When the prompt is long, most \
of the time before the first token goes to computing the keys and values of \
every earlier token. If those values were stored before, they can be loaded \
instead of computed. Loading costs the same for every chunk, while computing a \
chunk costs more the later it comes, because attention reads everything before \
it. So the best plan computes the first chunks and loads the last ones, and the \
two meet in the middle.
This is a small model with random weights. It does not know anything, and what \
it writes is not meant to make sense. It exists so that the system around it \
can be tested and measured: the server, the scheduler, the cache, and the \
storage. Please note that the answers you get here are random, and that the \
numbers you measure depend on the machine you run it on.
Question: What is the capital of France?
Answer: The capital of France is Paris, which is also its largest city.
Question: How many days are there in a week?
Answer: There are seven days in a week, and about fifty-two weeks in a year.
def main():
    for i in range(10):
        print(f\"value {i} = {i * 2}\")
    return None
fn main() {
    let mut total = 0;
    for x in 1..=100 {
        total += x;
    }
    println!(\"{}\", total);
}
if (error != nullptr) { return -1; } else { count++; }
Once upon a time there was a little girl who lived in a village near the \
forest. Every day she would walk to her grandmother's house, and every day \
she would stop to look at the flowers. \"Hello,\" she said. \"How are you \
today?\" The old woman smiled and said that she was very well, thank you.
In 2024, the company reported revenue of $1.5 billion, up 12% from the year \
before. Its shares rose 3.4% on Monday, and analysts said they expected the \
growth to continue through 2025 and 2026.
You are a helpful assistant. Answer the user's question as clearly and \
briefly as you can. If you do not know the answer, say that you do not know.
Summarize the following document in three sentences. Translate the text \
below into French. Write a short story about a robot who learns to paint. \
Explain the difference between a list and a tuple in Python. What are the \
main causes of climate change, and what can people do about it?
";

const ONSETS: &[&str] = &[
    "", "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
    "y", "z", "th", "sh", "ch", "st", "tr", "pl", "br", "gr", "cr", "fl", "wh", "qu", "sp",
];
const VOWELS: &[&str] = &[
    "a", "e", "i", "o", "u", "a", "e", "i", "o", "ea", "ou", "ai", "ee", "oo", "y", "ie", "au",
];
const CODAS: &[&str] = &[
    "", "", "", "n", "r", "s", "t", "l", "d", "ng", "st", "nd", "ck", "m", "rt", "ll", "ss", "x",
    "ght", "nt",
];
const SUFFIXES: &[&str] = &[
    "", "", "", "", "s", "ed", "ing", "er", "ly", "tion", "ment", "ness",
];
const ACCENTED: &[&str] = &["é", "è", "ü", "ö", "ä", "ñ", "ç", "à", "ê", "ß", "ø", "å"];
const CYRILLIC: &[&str] = &[
    "а", "о", "е", "и", "н", "т", "с", "р", "в", "л", "к", "м", "д", "п", "у", "я", "ы", "ь",
];
const PUNCT: &[&str] = &[
    ".",
    ",",
    ".\n",
    "\n",
    "\n\n",
    " (",
    ")",
    "\"",
    "'s",
    ":",
    ";",
    "!",
    "?",
    " -",
    " {",
    "}",
    "();",
    " =",
    " ==",
    " //",
    " */",
    " /*",
    "[",
    "]",
    "...",
    " '",
    "',",
    "\",",
    " +",
    " *",
    " <",
    ">",
    " ->",
    " =>",
    "::",
    " &&",
    " ||",
    "#",
    " #",
    "_",
    " $",
    "%",
    " @",
    "\t",
    "  ",
    "    ",
    "        ",
    "\n    ",
    "\n        ",
];
const EMOJI: &[&str] = &[
    "😀", "😂", "👍", "❤️", "🎉", "🔥", "✨", "🚀", "🙏", "😊", "🤔", "👀",
];

/// Pre-tokens (as the byte-level pre-tokenizer would cut text) with how
/// often each appears, sorted by bytes. `n_words` sets the size of the
/// made-up lexicon, so bigger vocabularies get enough distinct material.
pub(crate) fn pre_tokens(
    n_words: usize,
    text_pieces: impl Iterator<Item = String>,
) -> Vec<(Vec<u8>, u64)> {
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut add = |s: &str, n: u64| *counts.entry(s.as_bytes().to_vec()).or_insert(0) += n;
    for piece in text_pieces {
        add(&piece, TEXT_WEIGHT);
    }
    let mut rng = Rng::new(SEED);
    let pick = |rng: &mut Rng, list: &[&'static str]| list[rng.below(list.len() as u64) as usize];
    for rank in 0..n_words {
        // Zipf-like: the r-th word appears about 2000 / (r + 1) times.
        let n = 1 + (2000 / (rank as u64 + 1));
        let word = match rank % 20 {
            0 => {
                let len = 1 + rng.below(3) as usize;
                (0..len)
                    .map(|_| char::from_u32(0x4E00 + rng.below(1500) as u32).unwrap_or('中'))
                    .collect::<String>()
            }
            1 => {
                let len = 2 + rng.below(5) as usize;
                (0..len)
                    .map(|_| pick(&mut rng, CYRILLIC))
                    .collect::<String>()
            }
            _ => {
                let syllables = 1 + rng.below(3) as usize;
                let mut w = String::new();
                for _ in 0..syllables {
                    w.push_str(pick(&mut rng, ONSETS));
                    if rank % 20 == 2 {
                        w.push_str(pick(&mut rng, ACCENTED));
                    } else {
                        w.push_str(pick(&mut rng, VOWELS));
                    }
                    w.push_str(pick(&mut rng, CODAS));
                }
                w.push_str(pick(&mut rng, SUFFIXES));
                w
            }
        };
        add(&format!(" {word}"), n);
        add(&word, n.div_ceil(4));
        let mut cap = word.chars();
        if let Some(first) = cap.next() {
            let capital: String = first.to_uppercase().chain(cap).collect();
            add(&format!(" {capital}"), n.div_ceil(3));
            add(&capital, n.div_ceil(5));
        }
    }
    for i in 0..1000u32 {
        let n = 1 + 300 / (i as u64 + 1);
        add(&format!(" {i}"), n);
        add(&i.to_string(), n);
    }
    for year in 1900..2100u32 {
        add(&format!(" {year}"), 3);
    }
    for (i, p) in PUNCT.iter().enumerate() {
        add(p, 3000 / (i as u64 + 1));
    }
    for (i, e) in EMOJI.iter().enumerate() {
        add(e, 40 / (i as u64 + 1));
        add(&format!(" {e}"), 20 / (i as u64 + 1));
    }
    counts.into_iter().collect()
}

/// The embedded English text.
pub(crate) fn text() -> &'static str {
    TEXT
}
