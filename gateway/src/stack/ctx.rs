//! What travels down the stack: the shared state, the tenant, and a
//! generation request's context, filled in layer by layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cake_engine::Tokenizer;
use cake_engine::worker::RequestClass;

use crate::admission::{Admission, Reservation, SlotGuard, TenantEntry, TenantPermit};
use crate::api::{ChatTemplate, GenParams};
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
        let text = |id: Option<u32>| id.map(|i| tokenizer.token_text(i)).unwrap_or_default();
        let bos = text(tokenizer.bos_id());
        let eos = text(tokenizer.eos_ids().first().copied());
        let chat = ChatTemplate::new(tokenizer.chat_template().as_deref(), &bos, &eos);
        ModelInfo {
            name: name.to_string(),
            tokenizer,
            max_context,
            vocab_size,
            chat,
        }
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

/// What an admitted request holds until its response ends (the last
/// byte, an error, or the client leaving): fields drop in order, so the
/// worker's slot is free before the next waiter is served.
#[derive(Default)]
pub struct Held {
    pub reservation: Option<Reservation>,
    pub slot: Option<SlotGuard>,
    pub permit: Option<TenantPermit>,
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
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    pub fn get(&self) -> MetaInner {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The request id and arrival time (request extension set by `trace`).
#[derive(Debug, Clone)]
pub struct RequestId {
    pub id: String,
    pub received: Instant,
    pub meta: Arc<RequestMeta>,
}

/// A generation request on its way down.
pub struct GenCtx {
    pub rid: RequestId,
    pub tenant: Tenant,
    /// Set by `parse`.
    pub params: GenParams,
    /// Set by `tokenize`: the prompt's ids, and its text for `echo`.
    pub prompt: Vec<u32>,
    pub prompt_text: Option<String>,
    /// Set by `classify`.
    pub class: RequestClass,
    pub cached_tokens: usize,
    /// Set by `place`: healthy workers in the order to try them.
    pub candidates: Vec<Arc<WorkerSlot>>,
    /// Set by `admit` and `place`; dropped with the request.
    pub held: Held,
}
