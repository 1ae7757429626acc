//! One request from send to record, shared by the open-loop sender and the
//! closed loops: what the run knows (client, target, keys, prompts) and
//! what it collects (records, counters) live on one [`Ctx`].

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Uri};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

use crate::client::{self, BodyParams, Http, Outcome, Sent};
use crate::plan::Kind;
use crate::prompt::PromptBook;
use crate::runner::Record;
use crate::workload::Workload;

/// Everything a run's requests share.
pub(crate) struct Ctx {
    pub http: Http,
    pub uri: Uri,
    pub auths: Vec<Option<HeaderValue>>,
    /// `request_timeout_s`: a request's deadline after its intended send.
    pub timeout: Duration,
    /// The run's time zero.
    pub start: Instant,
    /// Messages (`/v1/chat/completions`) rather than a prompt string.
    pub chat: bool,
    pub params: BodyParams,
    pub book: PromptBook,
    pub workload: Workload,
    /// Bounds requests in flight (`max_in_flight`).
    pub in_flight: Arc<Semaphore>,
    pub records: Mutex<Vec<Record>>,
    pub dispatched: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
}

/// Who a request is, for its record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub tenant: u16,
    pub kind: Kind,
    pub step: u16,
    pub wave: Option<u32>,
    pub turn: Option<u32>,
}

/// How one request ended, for a closed loop to go on from.
#[derive(Debug)]
pub(crate) struct Exchanged {
    /// When the last byte arrived (or the request failed).
    pub end: Instant,
    /// Streamed to the end.
    pub ok: bool,
    /// The generated text, when kept.
    pub text: Option<String>,
}

impl Ctx {
    /// Waits for room under `max_in_flight`; `None` once the run is over.
    pub(crate) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.in_flight).acquire_owned().await.ok()
    }

    /// Sends `body` (due at `due`, which has passed), records the outcome
    /// and releases `permit`. Latencies count from `due`.
    pub(crate) async fn exchange(
        &self,
        meta: Meta,
        due: Instant,
        body: Bytes,
        keep_text: bool,
        permit: OwnedSemaphorePermit,
    ) -> Exchanged {
        self.dispatched.fetch_add(1, Ordering::Relaxed);
        let lag = Instant::now().saturating_duration_since(due);
        let auth = self
            .auths
            .get(usize::from(meta.tenant))
            .and_then(Option::as_ref);
        let req = client::post(&self.uri, auth, body);
        let sent = timeout_at(due + self.timeout, client::send(&self.http, req, keep_text))
            .await
            .unwrap_or_else(|_| Sent::failed(Outcome::Timeout));
        let end = Instant::now();
        let ok = sent.outcome == Outcome::Ok;
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let rec = Record {
            tenant: meta.tenant,
            kind: meta.kind,
            step: meta.step,
            wave: meta.wave,
            turn: meta.turn,
            intended: due.saturating_duration_since(self.start),
            lag,
            ttft: sent.first_token.map(|t| t.saturating_duration_since(due)),
            e2e: end.saturating_duration_since(due),
            outcome: sent.outcome,
            prompt_tokens: sent.prompt_tokens,
            completion_tokens: sent.completion_tokens,
            class: sent.class,
            reuse: sent.reuse,
        };
        self.records.lock().push(rec);
        self.done.fetch_add(1, Ordering::Relaxed);
        drop(permit);
        Exchanged {
            end,
            ok,
            text: sent.text,
        }
    }
}
