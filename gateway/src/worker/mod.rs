//! Workers as the gateway sees them: one trait, [`Worker`], for an engine
//! in this process ([`EmbeddedWorker`]), a `cake worker` over HTTP
//! ([`CakeWorker`]), any OpenAI-compatible server ([`OpenAiWorker`]) and
//! a [`MockWorker`] for tests and benchmarks. [`WorkerPool`] keeps their
//! health and the gateway's in-flight ledger; [`serve_worker`] is the HTTP
//! side of `cake worker`.

mod client;
mod embedded;
mod events;
mod mock;
mod openai;
mod pool;
mod remote;
mod server;

use std::time::Duration;

use cake_engine::EngineError;
use cake_engine::worker::{Classification, LoadReport, WorkErrorKind, WorkEvent, WorkRequest};
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::config::WorkerKind;

pub use embedded::EmbeddedWorker;
pub use events::{event_result, next_event};
#[cfg(test)]
pub(crate) use mock::mock_pool;
pub use mock::{MockOptions, MockWorker};
pub use openai::OpenAiWorker;
pub use pool::{WorkerPool, WorkerSlot};
pub use remote::CakeWorker;
pub use server::{WorkerServer, serve_worker};

/// A request's events, in order; dropping the stream cancels the work.
pub type EventStream = BoxStream<'static, Result<WorkEvent, WorkerError>>;

/// What can go wrong talking to a worker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkerError {
    /// Could not reach it, or the connection broke.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// It did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// It is full (its engine's `max_running + max_waiting`); another may
    /// take the request now. Not a health failure.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// It is shutting down or draining; another may take the request.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// It refused the request as wrong.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// It does not do this (e.g. classify on an OpenAI server).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// It failed inside.
    #[error("internal: {0}")]
    Internal(String),
}

impl WorkerError {
    /// The one mapping from a worker-side kind to a worker error: an
    /// engine's error in this process ([`From<EngineError>`]), a remote
    /// worker's error event or error body read off the wire.
    pub fn from_kind(kind: WorkErrorKind, message: String) -> WorkerError {
        match kind {
            WorkErrorKind::BadRequest => WorkerError::BadRequest(message),
            WorkErrorKind::Overloaded => WorkerError::Overloaded(message),
            WorkErrorKind::Unavailable => WorkerError::Unavailable(message),
            WorkErrorKind::Internal => WorkerError::Internal(message),
        }
    }

    /// The kind that carries this error on the wire (`cake worker`'s
    /// answers): what [`WorkerError::from_kind`] reads back on the other
    /// side. Whatever the server could not do itself (its own worker
    /// unreachable or silent) is `unavailable`: another worker may try.
    pub fn kind(&self) -> WorkErrorKind {
        match self {
            WorkerError::BadRequest(_) | WorkerError::Unsupported(_) => WorkErrorKind::BadRequest,
            WorkerError::Overloaded(_) => WorkErrorKind::Overloaded,
            WorkerError::Unavailable(_) | WorkerError::Unreachable(_) | WorkerError::Timeout(_) => {
                WorkErrorKind::Unavailable
            }
            WorkerError::Internal(_) => WorkErrorKind::Internal,
        }
    }

    /// The message alone, without the kind's prefix (what travels next to
    /// the kind on the wire, so the far side says it the same way).
    pub fn detail(&self) -> String {
        match self {
            WorkerError::Unreachable(m)
            | WorkerError::Overloaded(m)
            | WorkerError::Unavailable(m)
            | WorkerError::BadRequest(m)
            | WorkerError::Internal(m) => m.clone(),
            WorkerError::Timeout(_) | WorkerError::Unsupported(_) => self.to_string(),
        }
    }

    /// Whose fault it is: the client's (a bad request), or the worker's.
    pub fn fault(&self) -> crate::error::Fault {
        match self {
            WorkerError::BadRequest(_) => crate::error::Fault::Client,
            WorkerError::Internal(_) => crate::error::Fault::Internal,
            _ => crate::error::Fault::Worker,
        }
    }

    /// Whether another worker may be tried (nothing was done).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            WorkerError::Unreachable(_)
                | WorkerError::Timeout(_)
                | WorkerError::Overloaded(_)
                | WorkerError::Unavailable(_)
        )
    }

    /// Whether this counts against the worker's health.
    pub fn is_health_failure(&self) -> bool {
        matches!(self, WorkerError::Unreachable(_) | WorkerError::Timeout(_))
    }
}

impl From<EngineError> for WorkerError {
    fn from(e: EngineError) -> WorkerError {
        WorkerError::from_kind(e.kind(), e.to_string())
    }
}

/// One worker, however it is reached. Futures are `'static` so they can be
/// raced against timeouts and client disconnects.
pub trait Worker: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn kind(&self) -> WorkerKind;
    /// Starts a request; events follow on the stream.
    fn submit(&self, req: WorkRequest) -> BoxFuture<'static, Result<EventStream, WorkerError>>;
    /// Which of the prompt's full chunks are stored (one presence lookup).
    fn classify(
        &self,
        prompt: Vec<u32>,
        cache_group: String,
    ) -> BoxFuture<'static, Result<Classification, WorkerError>>;
    /// The worker's own load report.
    fn load(&self) -> BoxFuture<'static, Result<LoadReport, WorkerError>>;
    /// Answers when it can take requests.
    fn health(&self) -> BoxFuture<'static, Result<(), WorkerError>>;
    /// Waits until the KV chunks it has accepted for writing are stored
    /// (an engine's write-behind); at shutdown. Nothing to wait for by
    /// default: a remote worker flushes in its own process.
    fn flush(&self) -> BoxFuture<'static, ()> {
        Box::pin(futures::future::ready(()))
    }
}
