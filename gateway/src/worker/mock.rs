//! A worker with no model, for tests and the gateway benchmark: it answers
//! each request with a fixed number of tokens, optionally slowly, records
//! what it was sent and notices when a request is cancelled.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use cake_engine::TokenLogprob;
use cake_engine::worker::{
    Classification, LoadReport, RequestClass, TokenEvent, Usage, WorkErrorKind, WorkEvent,
    WorkRequest,
};
use dashmap::DashSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{EventStream, Worker, WorkerError};
use crate::config::WorkerKind;

/// How a [`MockWorker`] behaves.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Pause before each token (0: none).
    pub token_delay: Duration,
    /// Tokens produced when the request's `max_tokens` is larger.
    pub max_tokens: usize,
    /// Chunk size for the presence lookup it simulates.
    pub chunk_tokens: usize,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            token_delay: Duration::ZERO,
            max_tokens: usize::MAX,
            chunk_tokens: 16,
        }
    }
}

/// See the module docs. Cheap to clone; clones share their records.
#[derive(Clone)]
pub struct MockWorker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    opts: MockOptions,
    healthy: AtomicBool,
    /// Submit fails as unreachable while set.
    refuse: AtomicBool,
    submitted: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    /// Hashes of prompt prefixes ending at a chunk boundary, as a store
    /// that kept every chunk it computed would have them.
    stored: DashSet<u64>,
    last: parking_lot::Mutex<Option<WorkRequest>>,
    /// A load report to answer with instead of the real one.
    fake_load: parking_lot::Mutex<Option<LoadReport>>,
    /// Every request fails with this kind, as an engine's error would:
    /// `overloaded` at submit, the others as the first event.
    fail: parking_lot::Mutex<Option<WorkErrorKind>>,
    /// Tokens are produced while `true` ([`MockWorker::hold`]).
    open: tokio::sync::watch::Sender<bool>,
}

/// `n` default mock workers (`w0`, `w1`, …) in a pool that marks one down
/// after `down_after` failures in a row: what the unit tests of the pool,
/// admission and the stack start from.
#[cfg(test)]
pub(crate) fn mock_pool(n: usize, down_after: u32) -> (Vec<MockWorker>, Arc<super::WorkerPool>) {
    let mocks: Vec<MockWorker> = (0..n)
        .map(|i| MockWorker::new(&format!("w{i}"), MockOptions::default()))
        .collect();
    let slots = mocks
        .iter()
        .map(|m| {
            super::WorkerSlot::new(
                Arc::new(m.clone()),
                Duration::from_secs(5),
                Duration::from_secs(60),
            )
        })
        .collect();
    (mocks, Arc::new(super::WorkerPool::new(slots, down_after)))
}

/// Stored chunks are namespaced by cache group, as the engine's chunk keys
/// are: one group never hits another's prompts.
fn prefix_hash(group: &str, prefix: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    group.hash(&mut h);
    prefix.hash(&mut h);
    h.finish()
}

impl MockWorker {
    pub fn new(name: &str, opts: MockOptions) -> MockWorker {
        MockWorker {
            inner: Arc::new(Inner {
                name: name.to_string(),
                opts,
                healthy: AtomicBool::new(true),
                refuse: AtomicBool::new(false),
                submitted: AtomicU64::new(0),
                finished: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                stored: DashSet::new(),
                last: parking_lot::Mutex::new(None),
                fake_load: parking_lot::Mutex::new(None),
                fail: parking_lot::Mutex::new(None),
                open: tokio::sync::watch::channel(true).0,
            }),
        }
    }

    /// Health checks fail (and requests are refused) while `false`.
    pub fn set_healthy(&self, up: bool) {
        self.inner.healthy.store(up, Ordering::SeqCst);
        self.inner.refuse.store(!up, Ordering::SeqCst);
    }

    pub fn submitted(&self) -> u64 {
        self.inner.submitted.load(Ordering::SeqCst)
    }

    pub fn finished(&self) -> u64 {
        self.inner.finished.load(Ordering::SeqCst)
    }

    /// Requests whose receiver went away before they finished.
    pub fn cancelled(&self) -> u64 {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// The last request submitted.
    pub fn last_request(&self) -> Option<WorkRequest> {
        self.inner.last.lock().clone()
    }

    /// Fails every request with `kind` (`None`: serves again): a full
    /// engine refuses at submit (`overloaded`), other kinds come as the
    /// request's first event, as an engine's step failure does.
    pub fn fail_with(&self, kind: Option<WorkErrorKind>) {
        *self.inner.fail.lock() = kind;
    }

    /// While `held`, no request gets its next token: a test holds the
    /// worker busy for as long as it needs, without a clock.
    pub fn hold(&self, held: bool) {
        self.inner.open.send_replace(!held);
    }

    /// Answers load checks with `report` (`None`: the real one again).
    pub fn set_load(&self, report: Option<LoadReport>) {
        *self.inner.fake_load.lock() = report;
    }

    /// Marks every full chunk of `prompt` stored for `cache_group`, as if
    /// it had been served.
    pub fn store_prompt(&self, prompt: &[u32], cache_group: &str) {
        let c = self.inner.opts.chunk_tokens.max(1);
        for i in 1..=prompt.len() / c {
            self.inner
                .stored
                .insert(prefix_hash(cache_group, &prompt[..i * c]));
        }
    }

    fn stored_chunks(&self, prompt: &[u32], group: &str) -> Vec<bool> {
        let c = self.inner.opts.chunk_tokens.max(1);
        (1..=prompt.len() / c)
            .map(|i| {
                self.inner
                    .stored
                    .contains(&prefix_hash(group, &prompt[..i * c]))
            })
            .collect()
    }

    fn classification(&self, prompt: &[u32], group: &str) -> Classification {
        let stored = self.stored_chunks(prompt, group);
        let c = self.inner.opts.chunk_tokens.max(1);
        let cached_tokens = stored.iter().filter(|&&s| s).count() * c;
        Classification {
            class: Some(if cached_tokens > 0 {
                RequestClass::Cached
            } else {
                RequestClass::Fresh
            }),
            stored,
            cached_tokens,
            chunk_tokens: c,
        }
    }
}

/// The token the mock produces at step `i`: printable ASCII, so any
/// byte-level tokenizer can show it.
fn mock_token(i: usize) -> u32 {
    b'a' as u32 + (i % 26) as u32
}

impl Worker for MockWorker {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn kind(&self) -> WorkerKind {
        WorkerKind::Embedded
    }

    fn submit(&self, req: WorkRequest) -> BoxFuture<'static, Result<EventStream, WorkerError>> {
        if self.inner.refuse.load(Ordering::SeqCst) {
            let e = WorkerError::Unreachable(format!("{} is down", self.inner.name));
            return futures::future::ready(Err(e)).boxed();
        }
        let fail = *self.inner.fail.lock();
        if fail == Some(WorkErrorKind::Overloaded) {
            let e = WorkerError::from_kind(
                WorkErrorKind::Overloaded,
                format!("{} has every slot taken", self.inner.name),
            );
            return futures::future::ready(Err(e)).boxed();
        }
        self.inner.submitted.fetch_add(1, Ordering::SeqCst);
        *self.inner.last.lock() = Some(req.clone());
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(kind) = fail {
                let message = format!("{kind:?} fault injected into the mock");
                let _ = tx.send(WorkEvent::Error { kind, message }).await;
                return;
            }
            let arrived = Instant::now();
            let cls = me.classification(&req.prompt, &req.cache_group);
            let o = &req.options;
            if req.prompt.is_empty() {
                let _ = tx
                    .send(WorkEvent::Error {
                        kind: WorkErrorKind::BadRequest,
                        message: "empty prompt".into(),
                    })
                    .await;
                return;
            }
            if o.prompt_logprobs {
                let lps = req
                    .prompt
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| {
                        (i > 0).then(|| TokenLogprob {
                            token: t,
                            logprob: -1.0,
                            top: vec![(t, -1.0)],
                        })
                    })
                    .collect();
                if tx
                    .send(WorkEvent::PromptLogprobs { logprobs: lps })
                    .await
                    .is_err()
                {
                    me.inner.cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            let n = o.max_tokens.min(me.inner.opts.max_tokens);
            let mut ttft_ms = 0.0;
            let mut text = String::new();
            let mut finish = "length";
            let mut open = me.inner.open.subscribe();
            for i in 0..n {
                tokio::select! {
                    _ = open.wait_for(|o| *o) => {}
                    _ = tx.closed() => {
                        me.inner.cancelled.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
                if !me.inner.opts.token_delay.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(me.inner.opts.token_delay) => {}
                        _ = tx.closed() => {
                            me.inner.cancelled.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                let token = mock_token(i);
                let piece = char::from_u32(token).map(String::from).unwrap_or_default();
                text.push_str(&piece);
                if i == 0 {
                    ttft_ms = arrived.elapsed().as_secs_f64() * 1e3;
                }
                let stop_hit = o
                    .stop
                    .iter()
                    .any(|s| !s.is_empty() && text.ends_with(s.as_str()));
                let logprob = o.logprobs.map(|k| TokenLogprob {
                    token,
                    logprob: -0.5,
                    top: (0..k as u32)
                        .map(|j| (mock_token(i) + j, -0.5 - j as f32))
                        .collect(),
                });
                let ev = WorkEvent::Token(TokenEvent {
                    token,
                    text: if stop_hit { String::new() } else { piece },
                    logprob,
                });
                if tx.send(ev).await.is_err() {
                    me.inner.cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if stop_hit {
                    finish = "stop";
                    break;
                }
            }
            // Every full chunk of the prompt is now "stored".
            me.store_prompt(&req.prompt, &req.cache_group);
            let generated = text.chars().count();
            let usage = Usage {
                prompt_tokens: req.prompt.len(),
                completion_tokens: generated.min(n),
                cached_tokens: cls.cached_tokens,
                loaded_tokens: cls.cached_tokens,
                computed_tokens: req.prompt.len() - cls.cached_tokens,
                shared_tokens: 0,
                ttft_ms,
                total_ms: arrived.elapsed().as_secs_f64() * 1e3,
                strategy: "cake".into(),
                worker: me.inner.name.clone(),
            };
            let done = WorkEvent::Done {
                finish_reason: finish.into(),
                usage,
            };
            if tx.send(done).await.is_ok() {
                me.inner.finished.fetch_add(1, Ordering::SeqCst);
            } else {
                me.inner.cancelled.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut rx = rx;
        let s: EventStream = Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|ev| ev.map(Ok))
        }));
        futures::future::ready(Ok(s)).boxed()
    }

    fn classify(
        &self,
        prompt: Vec<u32>,
        cache_group: String,
    ) -> BoxFuture<'static, Result<Classification, WorkerError>> {
        futures::future::ready(Ok(self.classification(&prompt, &cache_group))).boxed()
    }

    fn load(&self) -> BoxFuture<'static, Result<LoadReport, WorkerError>> {
        let i = &self.inner;
        if let Some(r) = i.fake_load.lock().clone() {
            return futures::future::ready(Ok(r)).boxed();
        }
        let running = i
            .submitted
            .load(Ordering::SeqCst)
            .saturating_sub(i.finished.load(Ordering::SeqCst))
            .saturating_sub(i.cancelled.load(Ordering::SeqCst));
        futures::future::ready(Ok(LoadReport {
            worker: i.name.clone(),
            running,
            chunk_tokens: i.opts.chunk_tokens as u64,
            ..LoadReport::default()
        }))
        .boxed()
    }

    fn health(&self) -> BoxFuture<'static, Result<(), WorkerError>> {
        let r = if self.inner.healthy.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(WorkerError::Unreachable(format!(
                "{} is down",
                self.inner.name
            )))
        };
        futures::future::ready(r).boxed()
    }
}
