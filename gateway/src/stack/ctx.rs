//! What travels down the stack: the shared state, the tenant, and a
//! generation request's context, filled in layer by layer.

use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::time::Instant;

use cake_engine::Tokenizer;
use cake_engine::worker::RequestClass;

use crate::admission::{Admission, Admitted, PrefixChunks, TenantEntry};
use crate::api::{ChatMessage, ChatTemplate, GenParams};
use crate::config::ServerConfig;
use crate::error::GatewayError;
use crate::http::DrainState;
use crate::worker::{WorkerPool, WorkerSlot};

/// A boxed response future of the inner layers.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send>>;

/// The model the gateway serves, as the gateway needs to know it.
pub struct ModelInfo {
    /// The id clients send as `model`.
    pub name: String,
    pub tokenizer: Tokenizer,
    /// Context length in tokens (prompt plus output).
    pub max_context: usize,
    /// Rows of the model's embedding: valid token ids are below it.
    pub vocab_size: usize,
    pub chat: ChatTemplate,
}

impl ModelInfo {
    /// From a tokenizer and the model's shape; the chat template comes
    /// from the tokenizer's config when it has one.
    pub fn new(
        name: &str,
        tokenizer: Tokenizer,
        max_context: usize,
        vocab_size: usize,
    ) -> ModelInfo {
        let chat = ChatTemplate::new(
            tokenizer.chat_template().as_deref(),
            tokenizer.bos_token().unwrap_or_default(),
            tokenizer.eos_token().unwrap_or_default(),
        );
        ModelInfo {
            name: name.to_string(),
            tokenizer,
            max_context,
            vocab_size,
            chat,
        }
    }
}

impl ModelInfo {
    /// The ids of a plain (completion) prompt, as transformers'
    /// `tokenizer(text)` gives them: BOS first when the tokenizer adds one.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>, GatewayError> {
        self.tokenizer
            .encode(text, self.tokenizer.add_bos())
            .map_err(|e| GatewayError::field("prompt", format!("cannot be tokenized: {e}")))
    }

    /// The text of a chat prompt, as `apply_chat_template(messages,
    /// add_generation_prompt)` renders it, and whether BOS is added when
    /// encoding it: a model's template writes BOS itself (the plain default
    /// template gets BOS as a plain prompt would).
    pub fn chat_text(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<(String, bool), GatewayError> {
        let text = self.chat.render(messages, add_generation_prompt)?;
        let add_bos = !self.chat.is_model_template() && self.tokenizer.add_bos();
        Ok((text, add_bos))
    }

    /// The ids of a chat prompt, as `apply_chat_template(messages,
    /// add_generation_prompt)` gives them.
    pub fn chat_ids(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, GatewayError> {
        let (text, add_bos) = self.chat_text(messages, add_generation_prompt)?;
        self.tokenizer
            .encode(&text, add_bos)
            .map_err(|e| GatewayError::field("messages", format!("cannot be tokenized: {e}")))
    }
}

/// Everything the layers share.
pub struct AppState {
    pub server: ServerConfig,
    pub model: Arc<ModelInfo>,
    pub pool: Arc<WorkerPool>,
    pub admission: Arc<Admission>,
    /// Whether the server is draining (`/health` answers 503).
    pub drain: DrainState,
}

/// Who is calling: from the API key, or `default` when no tenants are
/// configured.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub cache_group: String,
    /// The configured tenant; `None` for `default`.
    pub(crate) entry: Option<Arc<TenantEntry>>,
}

impl Tenant {
    /// Everyone, when no tenants are configured.
    pub fn default_tenant() -> Tenant {
        Tenant {
            name: "default".into(),
            cache_group: "default".into(),
            entry: None,
        }
    }
}

/// What the top of the stack learns from the layers below, for its span,
/// log line and metrics.
#[derive(Debug, Default)]
pub struct RequestMeta {
    inner: Mutex<MetaInner>,
}

#[derive(Debug, Default, Clone)]
pub struct MetaInner {
    pub tenant: Option<String>,
    pub class: Option<RequestClass>,
    pub worker: Option<String>,
}

impl RequestMeta {
    pub fn update(&self, f: impl FnOnce(&mut MetaInner)) {
        let mut g = self.inner.lock();
        f(&mut g);
    }

    pub fn get(&self) -> MetaInner {
        self.inner.lock().clone()
    }
}

/// The request id and arrival time (request extension set by `trace`).
#[derive(Debug, Clone)]
pub struct RequestId {
    pub id: String,
    pub received: Instant,
    pub meta: Arc<RequestMeta>,
}

/// A generation request on its way down grows by stage: each layer takes
/// the stage above it and hands the next one down, so a layer can only
/// run where what it reads has been filled in (a reordered stack does not
/// compile). Each stage derefs to the one before it.
///
/// `parse`'s: who asks, and what.
pub struct Parsed {
    pub rid: RequestId,
    pub tenant: Tenant,
    pub params: GenParams,
}

/// `tokenize`'s: the prompt's ids, and its text for `echo`.
pub struct Tokenized {
    pub parsed: Parsed,
    pub prompt: Vec<u32>,
    pub prompt_text: Option<String>,
}

/// `classify`'s: the class and the prompt tokens that need not be computed
/// (stored, or being computed for a request in flight).
pub struct Classified {
    pub tokenized: Tokenized,
    pub class: RequestClass,
    pub cached_tokens: usize,
    /// Of those, the stored ones.
    pub stored_tokens: usize,
    /// The prompt's chunks, for the in-flight prefix registry.
    pub chunks: PrefixChunks,
}

/// `admit`'s: what the request holds until its response ends (grown by
/// `place` and `dispatch`), given back when this drops.
pub struct Holding {
    pub classified: Classified,
    pub admitted: Admitted,
}

/// `place`'s: healthy workers in the order to try them.
pub struct Placed {
    pub holding: Holding,
    pub candidates: Vec<Arc<WorkerSlot>>,
}

macro_rules! stage {
    ($stage:ty => $prev:ty, $field:ident) => {
        impl std::ops::Deref for $stage {
            type Target = $prev;
            fn deref(&self) -> &$prev {
                &self.$field
            }
        }
    };
}

stage!(Tokenized => Parsed, parsed);
stage!(Classified => Tokenized, tokenized);
stage!(Holding => Classified, classified);
stage!(Placed => Holding, holding);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A tokenizer folder as transformers 5 saves it (the template in
    /// `chat_template.jinja`), with the ids transformers gives
    /// (`scripts/chat_fixtures.py`).
    fn fixture() -> (ModelInfo, serde_json::Value) {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/chat");
        let tok = Tokenizer::from_file(&dir).unwrap();
        let want = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        (
            ModelInfo::new("m", tok, 8192, 266),
            serde_json::from_str(&want).unwrap(),
        )
    }

    #[test]
    fn chat_prompts_are_token_for_token_transformers() {
        let (info, want) = fixture();
        assert!(info.chat.is_model_template());
        for case in want["chats"].as_array().unwrap() {
            let msgs: Vec<ChatMessage> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| ChatMessage {
                    role: m["role"].as_str().unwrap().into(),
                    content: m["content"].as_str().unwrap().into(),
                })
                .collect();
            let text = info.chat.render(&msgs, true).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap());
            let ids = info.chat_ids(&msgs, true).unwrap();
            let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(ids, expected, "{text:?}");
        }
        let plain = &want["plain"];
        let ids = info.prompt_ids(plain["text"].as_str().unwrap()).unwrap();
        let expected: Vec<u32> = serde_json::from_value(plain["ids"].clone()).unwrap();
        assert_eq!(ids, expected, "no BOS: the config does not ask for one");
        // generation_config.json's EOS list and the config's eos_token.
        assert_eq!(info.tokenizer.eos_ids(), vec![0, 2]);
    }
}
