//! What the layers' unit tests share: a real tokenizer, stages built the
//! way the layers above build them, mock workers, and an inner service
//! that hands back the stage it was given.

use std::sync::Arc;

use tower::Service;

use cake_engine::worker::RequestClass;

use super::ctx::{
    Classified, Holding, ModelInfo, Parsed, RequestId, RequestMeta, Tenant, Tokenized,
};
use crate::admission::{Admission, AdmitRequest, PlaceRequest, PrefixChunks, chunk_ids};
use crate::api::{Api, parse_request};
use crate::config::PolicyConfig;
use crate::error::GatewayError;
use crate::worker::{MockWorker, WorkerPool, mock_pool};

/// Context length of the test model, small enough to reach.
pub const CONTEXT: usize = 64;

/// The chat fixture's tokenizer (a transformers 5 folder), served as `m`.
pub fn model() -> Arc<ModelInfo> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/chat");
    let tok = cake_engine::Tokenizer::from_file(&dir).expect("fixture tokenizer");
    Arc::new(ModelInfo::new("m", tok, CONTEXT, 266))
}

/// A completions body as `parse` hands it down, for the default tenant.
pub fn parsed(body: &str) -> Parsed {
    let params = parse_request(Api::Completions, body.as_bytes(), 16).expect("a valid body");
    Parsed {
        rid: RequestId {
            id: "t".into(),
            received: tokio::time::Instant::now(),
            meta: Arc::new(RequestMeta::default()),
        },
        tenant: Tenant::default_tenant(),
        params,
    }
}

/// A prompt of token ids, as `tokenize` hands it down.
pub fn tokenized(prompt: &[u32]) -> Tokenized {
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let body = format!(r#"{{"prompt": [{}], "max_tokens": 4}}"#, ids.join(","));
    Tokenized {
        parsed: parsed(&body),
        prompt: prompt.to_vec(),
        prompt_text: None,
    }
}

/// A fresh prompt of token ids, as `classify` hands it down (chunks of 16
/// tokens, none stored).
pub fn classified(prompt: &[u32]) -> Classified {
    let ids = chunk_ids("default", prompt, 16);
    Classified {
        tokenized: tokenized(prompt),
        class: RequestClass::Fresh,
        cached_tokens: 0,
        stored_tokens: 0,
        chunks: PrefixChunks {
            stored: vec![false; ids.len()],
            cap: (prompt.len().saturating_sub(1) / 16).min(ids.len()),
            ids,
            chunk_tokens: 16,
        },
    }
}

/// That prompt admitted, as `admit` hands it down.
pub async fn holding(admission: &Admission, prompt: &[u32]) -> Holding {
    let classified = classified(prompt);
    let req = AdmitRequest {
        tenant: "default",
        entry: None,
        place: PlaceRequest {
            prompt,
            cached_tokens: 0,
            cache_group: "default",
            chunks: None,
        },
    };
    let admitted = admission.admit(&req).await.expect("admitted");
    Holding {
        classified,
        admitted,
    }
}

/// `n` mock workers (chunks of 16 tokens) in a pool, and an admission
/// over it with `policy`.
pub fn fleet(
    n: usize,
    policy: &PolicyConfig,
) -> (Vec<MockWorker>, Arc<WorkerPool>, Arc<Admission>) {
    let (mocks, pool) = mock_pool(n, 1);
    let admission = Arc::new(Admission::new(policy, &[], pool.clone()));
    (mocks, pool, admission)
}

/// An inner service answering with the stage it was given.
pub fn echo<T: Send + 'static>()
-> impl Service<T, Response = T, Error = GatewayError, Future: Send> + Clone + Send + 'static {
    tower::service_fn(|t: T| async move { Ok::<T, GatewayError>(t) })
}
