//! Pieces the system benchmarks share: seeded prompts, filling a store
//! with a prompt's chunks, and running one request to its end.

use std::sync::Arc;
use std::time::Duration;

use crate::kv::{KvStore, chunk_keys};
use crate::worker::{Engine, EngineConfig, Strategy, Usage, WorkEvent, WorkOptions, WorkRequest};
use crate::{EngineError, Model, Rng, Tokenizer};

/// A seeded prompt of `n` token ids the tokenizer can decode.
pub fn random_prompt(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(vocab as u64) as u32).collect()
}

/// A greedy request for `max_tokens` tokens.
pub fn bench_request(
    id: &str,
    prompt: Vec<u32>,
    max_tokens: usize,
    strategy: Option<Strategy>,
) -> WorkRequest {
    WorkRequest {
        id: id.to_string(),
        prompt,
        options: WorkOptions {
            max_tokens,
            temperature: 0.0,
            ignore_eos: true,
            ..Default::default()
        },
        cache_group: "bench".into(),
        strategy,
        priority: 0,
    }
}

/// Runs a request to its end and returns its usage.
pub async fn run_request(engine: &Engine, req: WorkRequest) -> Result<Usage, EngineError> {
    let mut rx = engine.submit(req)?;
    while let Some(ev) = rx.recv().await {
        match ev {
            WorkEvent::Done { usage, .. } => return Ok(usage),
            WorkEvent::Error { message, .. } => return Err(EngineError::BadRequest(message)),
            _ => {}
        }
    }
    Err(EngineError::BadRequest(
        "the worker closed the stream".into(),
    ))
}

/// Computes `prompt` once with write-back into `store` and waits until
/// every full chunk is stored.
pub async fn fill_store(
    model: &Arc<Model>,
    tokenizer: &Arc<Tokenizer>,
    store: &Arc<dyn KvStore>,
    cfg: &EngineConfig,
    prompt: &[u32],
) -> Result<(), EngineError> {
    let engine = Engine::start(
        model.clone(),
        tokenizer.clone(),
        Some(store.clone()),
        EngineConfig {
            write_back: true,
            ..cfg.clone()
        },
    )?;
    run_request(
        &engine,
        bench_request("fill", prompt.to_vec(), 1, Some(Strategy::Compute)),
    )
    .await?;
    let keys = chunk_keys(&engine.namespace("bench"), prompt);
    for _ in 0..3000 {
        if store.lookup(&keys).await.iter().all(Option::is_some) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(EngineError::BadRequest(
        "the store did not take the prompt's chunks (is it too small?)".into(),
    ))
}

/// The median (the mean of the middle two for an even count; 0 when
/// empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}
