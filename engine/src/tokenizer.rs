//! Tokenizer: a thin wrapper over the `tokenizers` crate.
//!
//! Loads any Hugging Face `tokenizer.json` (real Llama-2 and Llama-3 files,
//! and the byte-level BPE that `cake model init` writes), and reads the
//! special tokens and chat template as transformers does: the template from
//! `chat_template.jinja` (transformers >= 4.43 writes it there) or else
//! `tokenizer_config.json`'s `chat_template` (a string, or a list of named
//! templates of which `default` is used); BOS/EOS and `add_bos_token` from
//! `tokenizer_config.json`; every EOS id of `generation_config.json` (one or
//! a list) ends a sequence. A GGUF file's tokenizer is built by
//! [`crate::gguf`] and assembled here the same way.
//!
//! Decoding keeps special tokens' text, so that `decode(encode(s)) == s` for
//! every string with a byte-level tokenizer; callers that hide special
//! tokens filter ids with [`Tokenizer::is_special`] first.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::EngineError;

/// Names of the begin-of-sequence token in the tokenizers we know.
const BOS_NAMES: &[&str] = &["<|begin_of_text|>", "<s>"];
/// Names of end-of-sequence tokens in the tokenizers we know.
const EOS_NAMES: &[&str] = &["<|end_of_text|>", "<|eot_id|>", "</s>"];

/// A loaded tokenizer. Cloning is cheap (shared).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tok: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Vec<u32>,
    /// The BOS and (first) EOS tokens' text, as chat templates see them.
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos: bool,
    chat_template: Option<String>,
}

/// What a tokenizer is assembled from, whichever file it came from.
pub(crate) struct Parts {
    pub tok: tokenizers::Tokenizer,
    /// The BOS token's text, when the source names one.
    pub bos_token: Option<String>,
    /// The EOS token's text, when the source names one.
    pub eos_token: Option<String>,
    /// Further ids that end a sequence (`generation_config.json`).
    pub eos_ids: Vec<u32>,
    /// Whether a plain prompt starts with BOS; `None`: as the tokenizer's
    /// post-processor does.
    pub add_bos: Option<bool>,
    pub chat_template: Option<String>,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Loads `tokenizer.json` (a file, or a folder holding one), and the
    /// `tokenizer_config.json` / `generation_config.json` beside it if present.
    pub fn from_file(path: &Path) -> Result<Tokenizer, EngineError> {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        let tok = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| tok_err(format!("{}: {e}", file.display())))?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let tok_config = read_json(&dir.join("tokenizer_config.json"))?;
        let gen_config = read_json(&dir.join("generation_config.json"))?;
        let jinja = read_text(&dir.join("chat_template.jinja"))?;
        let mut parts = Tokenizer::parts(tok, tok_config.as_ref(), gen_config.as_ref());
        if jinja.is_some() {
            parts.chat_template = jinja;
        }
        Ok(Tokenizer::assemble(parts))
    }

    /// The tokenizer of a model: `path` is a checkpoint folder (or its
    /// `tokenizer.json`), or a GGUF file, whose metadata holds it.
    pub fn load(path: &Path) -> Result<Tokenizer, EngineError> {
        if crate::gguf::is_gguf(path) {
            let file = crate::gguf::GgufFile::open(path)?;
            Ok(Tokenizer::assemble(crate::gguf::tokenizer_parts(&file)?))
        } else {
            Tokenizer::from_file(path)
        }
    }

    /// A tokenizer from the text of a `tokenizer.json` and, optionally, of
    /// a `tokenizer_config.json`.
    pub fn from_json(
        tokenizer_json: &str,
        config_json: Option<&str>,
    ) -> Result<Tokenizer, EngineError> {
        let tok: tokenizers::Tokenizer = tokenizer_json.parse().map_err(tok_err)?;
        let config = config_json
            .map(serde_json::from_str::<Value>)
            .transpose()
            .map_err(|e| tok_err(format!("tokenizer_config.json: {e}")))?;
        Ok(Tokenizer::assemble(Tokenizer::parts(
            tok,
            config.as_ref(),
            None,
        )))
    }

    /// The parts a Hugging Face folder's JSON files give.
    fn parts(
        tok: tokenizers::Tokenizer,
        config: Option<&Value>,
        generation: Option<&Value>,
    ) -> Parts {
        let get = |k: &str| config.and_then(|c| c.get(k));
        Parts {
            bos_token: get("bos_token").and_then(token_name),
            eos_token: get("eos_token").and_then(token_name),
            eos_ids: generation
                .and_then(|g| g.get("eos_token_id"))
                .map(ids_of)
                .unwrap_or_default(),
            add_bos: get("add_bos_token").and_then(Value::as_bool),
            chat_template: get("chat_template").and_then(template_of),
            tok,
        }
    }

    pub(crate) fn assemble(p: Parts) -> Tokenizer {
        let tok = p.tok;
        let vocab_size = tok.get_vocab_size(true);
        let id = |n: &Option<String>| n.as_deref().and_then(|n| tok.token_to_id(n));
        let bos = id(&p.bos_token).or_else(|| BOS_NAMES.iter().find_map(|n| tok.token_to_id(n)));
        let mut eos: Vec<u32> = id(&p.eos_token).into_iter().collect();
        eos.extend(p.eos_ids);
        if eos.is_empty() {
            eos.extend(EOS_NAMES.iter().filter_map(|n| tok.token_to_id(n)));
        }
        eos.retain(|&id| (id as usize) < vocab_size);
        eos.sort_unstable();
        eos.dedup();
        // transformers' `tokenizer(text)` adds BOS when `add_bos_token`
        // says so, else when the post-processor puts it there.
        let add_bos = p.add_bos.unwrap_or_else(|| {
            bos.is_some_and(|b| {
                tok.encode("a", true)
                    .is_ok_and(|e| e.get_ids().first() == Some(&b))
            })
        });
        let text = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
        let bos_token = p.bos_token.filter(|_| bos.is_some()).or_else(|| text(bos));
        let eos_token = p
            .eos_token
            .filter(|n| tok.token_to_id(n).is_some())
            .or_else(|| text(eos.first().copied()));
        Tokenizer {
            inner: Arc::new(Inner {
                tok,
                vocab_size,
                bos,
                eos,
                bos_token,
                eos_token,
                add_bos,
                chat_template: p.chat_template,
            }),
        }
    }

    /// Token ids of `text`; with `add_bos`, the begin-of-sequence token is
    /// put first (once: not again when the text already starts with it).
    /// Special tokens written in the text (as chat templates do) are parsed.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, EngineError> {
        let enc = self.inner.tok.encode(text, false).map_err(tok_err)?;
        let ids = enc.get_ids();
        match self.inner.bos {
            Some(bos) if add_bos && ids.first() != Some(&bos) => {
                let mut out = Vec::with_capacity(ids.len() + 1);
                out.push(bos);
                out.extend_from_slice(ids);
                Ok(out)
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// Text of `ids`, special tokens included. Ids outside the tokenizer's
    /// vocabulary (a model's vocabulary may be larger) are skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        let known: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| (id as usize) < self.inner.vocab_size)
            .collect();
        self.inner.tok.decode(&known, false).map_err(tok_err)
    }

    /// Number of tokens, added (special) tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }

    /// Whether a plain prompt (a completion's) starts with BOS, as
    /// transformers' `tokenizer(text)` does it. Chat prompts never get one
    /// added: the template writes it (as `apply_chat_template` does).
    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }

    /// The BOS token's text (`bos_token` in chat templates).
    pub fn bos_token(&self) -> Option<&str> {
        self.inner.bos_token.as_deref()
    }

    /// The EOS token's text (`eos_token` in chat templates): the one the
    /// tokenizer config names, else the lowest EOS id's.
    pub fn eos_token(&self) -> Option<&str> {
        self.inner.eos_token.as_deref()
    }

    /// Every id that ends a sequence (e.g. `<|end_of_text|>` and `<|eot_id|>`).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.inner.eos.clone()
    }

    /// Whether `id` is a special (added) token such as `<|eot_id|>`.
    pub fn is_special(&self, id: u32) -> bool {
        let tok = &self.inner.tok;
        tok.id_to_token(id)
            .is_some_and(|t| tok.get_added_vocabulary().is_special_token(&t))
    }

    /// The text one token stands for, for display (e.g. in logprobs). A
    /// token that is part of a multi-byte character shows as `\u{FFFD}`;
    /// an unknown id shows as an empty string.
    pub fn token_text(&self, id: u32) -> String {
        if (id as usize) >= self.inner.vocab_size {
            return String::new();
        }
        match self.inner.tok.decode(&[id], false) {
            Ok(s) => s,
            Err(_) => self.inner.tok.id_to_token(id).unwrap_or_default(),
        }
    }

    /// The model's Jinja chat template (`chat_template.jinja`,
    /// `tokenizer_config.json` or GGUF metadata), if any.
    pub fn chat_template(&self) -> Option<String> {
        self.inner.chat_template.clone()
    }

    /// An incremental decoder for streaming output.
    pub fn decode_stream(&self) -> DecodeStream {
        DecodeStream {
            tok: self.clone(),
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }
}

/// Turns a stream of token ids into a stream of text pieces, holding back
/// bytes of a character not yet complete (a multi-byte character may span
/// several byte-level or byte-fallback tokens).
///
/// Each step is `tokenizers`' own streaming decode
/// ([`tokenizers::tokenizer::step_decode_stream`], what
/// `tokenizers::DecodeStream` runs): it decodes a small window of ids, so
/// that decoders that depend on context (e.g. SentencePiece's leading-space
/// rule) give the same text as decoding everything at once. The state is
/// kept here rather than in a `tokenizers::DecodeStream` because that one
/// borrows the tokenizer, and ours owns a handle to it. Added here: ids
/// outside the vocabulary are skipped, and [`DecodeStream::finish`] gives
/// back what is still held.
#[derive(Debug, Clone)]
pub struct DecodeStream {
    tok: Tokenizer,
    /// The window: ids from the start of the text already given out as
    /// `prefix`.
    ids: Vec<u32>,
    /// The text of `ids[..prefix_index]`, already given out.
    prefix: String,
    prefix_index: usize,
}

impl DecodeStream {
    /// Adds one token; returns the text that became final (maybe empty).
    pub fn push(&mut self, id: u32) -> Result<String, EngineError> {
        if (id as usize) >= self.tok.vocab_size() {
            return Ok(String::new());
        }
        let step = tokenizers::tokenizer::step_decode_stream(
            &self.tok.inner.tok,
            vec![id],
            false,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        );
        match step {
            Ok(text) => Ok(text.unwrap_or_default()),
            // The window's text no longer starts with what was given out
            // (a decoder that rewrites earlier text): hold back, as when
            // the text ends in an incomplete character.
            Err(e)
                if matches!(
                    e.downcast_ref::<tokenizers::tokenizer::DecodeStreamError>(),
                    Some(tokenizers::tokenizer::DecodeStreamError::InvalidPrefix { .. })
                ) =>
            {
                Ok(String::new())
            }
            Err(e) => Err(tok_err(e)),
        }
    }

    /// What the held-back ids decode to now (an incomplete character as
    /// `\u{FFFD}`), without giving it out: for looking ahead, e.g. for a
    /// stop sequence made of such characters.
    pub fn held(&self) -> Result<String, EngineError> {
        if self.ids.len() <= self.prefix_index {
            return Ok(String::new());
        }
        let text = self.tok.decode(&self.ids)?;
        Ok(match text.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => String::new(),
        })
    }

    /// The text still held back (an incomplete character decodes to
    /// `\u{FFFD}`); call once the stream has ended.
    pub fn finish(&mut self) -> Result<String, EngineError> {
        let rest = self.held()?;
        self.ids.clear();
        self.prefix.clear();
        self.prefix_index = 0;
        Ok(rest)
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, EngineError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| tok_err(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(tok_err(format!("{}: {e}", path.display()))),
    }
}

fn read_text(path: &Path) -> Result<Option<String>, EngineError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(tok_err(format!("{}: {e}", path.display()))),
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` (both spellings are in the wild).
fn token_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn ids_of(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// A template string, or the `default` one of a list of named templates.
fn template_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            };
            named("default")
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        _ => None,
    }
}
