//! The HTTP side of `cake worker`: one [`Worker`] (an engine) served with
//! the protocol [`super::CakeWorker`] speaks (see `remote.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cake_engine::worker::{WorkErrorKind, WorkEvent, WorkRequest};
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;

use super::events::ndjson_line;
use super::remote::ClassifyBody;
use super::{Worker, WorkerError};
use crate::http::{
    Body, Cutoff, DrainSignal, DrainState, ServerHandle, json_response, serve, stream_body,
};

/// Largest request body a worker reads (token ids are small; 64 MiB is
/// far above any context).
const MAX_BODY: usize = 64 << 20;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct WorkerServer {
    worker: Arc<dyn Worker>,
    drain: DrainState,
}

impl WorkerServer {
    pub fn new(worker: Arc<dyn Worker>, drain: DrainState) -> WorkerServer {
        WorkerServer { worker, drain }
    }
}

/// Serves `worker` on `listener`; [`ServerHandle::drain`] ends it
/// gracefully (a request cut at the deadline gets 503 `unavailable`, a
/// stream a last `error` event of that kind).
pub fn serve_worker(
    listener: TcpListener,
    worker: Arc<dyn Worker>,
    read_timeout: Duration,
) -> std::io::Result<ServerHandle> {
    let signal = DrainSignal::new();
    let svc = WorkerServer::new(worker, signal.state());
    serve(listener, svc, read_timeout, signal, worker_cutoff())
}

const SHUTTING_DOWN: &str = "worker shutting down: drain deadline passed";

fn worker_cutoff() -> Cutoff {
    fn response() -> Response<Body> {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            WorkErrorKind::Unavailable,
            SHUTTING_DOWN.into(),
        )
    }
    fn tail(h: &http::HeaderMap) -> Option<Bytes> {
        let ndjson = h
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/x-ndjson");
        if !ndjson {
            return None;
        }
        let ev = WorkEvent::Error {
            kind: WorkErrorKind::Unavailable,
            message: SHUTTING_DOWN.into(),
        };
        Some(ndjson_line(&ev))
    }
    Cutoff { response, tail }
}

fn error(status: StatusCode, kind: WorkErrorKind, message: String) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"kind": kind, "message": message}}),
    )
}

/// The status of an error body of `kind`. The body's `kind` is what the
/// gateway reads ([`WorkerError::from_kind`]); the status is for other
/// clients, and for gateways older than the kind in the body.
fn status_of(kind: WorkErrorKind) -> StatusCode {
    match kind {
        WorkErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        WorkErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        WorkErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        WorkErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn worker_error(e: WorkerError) -> Response<Body> {
    let kind = e.kind();
    let status = match e {
        WorkerError::Unsupported(_) => StatusCode::NOT_FOUND,
        _ => status_of(kind),
    };
    if kind == WorkErrorKind::Internal {
        tracing::error!(error = %e, "worker failed inside");
    }
    error(status, kind, e.detail())
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                WorkErrorKind::BadRequest,
                format!("reading body: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            WorkErrorKind::BadRequest,
            format!("body: {e}"),
        )
    })
}

async fn handle(
    worker: Arc<dyn Worker>,
    drain: DrainState,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/worker/v1/submit") => {
            let work: WorkRequest = match read_json(req).await {
                Ok(w) => w,
                Err(r) => return r,
            };
            match worker.submit(work).await {
                Ok(events) => {
                    // One event per line; the stream (and the engine's
                    // receiver in it) is dropped when the gateway hangs up.
                    let lines = events.map(|ev| {
                        let ev = ev.unwrap_or_else(|e| WorkEvent::Error {
                            kind: e.kind(),
                            message: e.detail(),
                        });
                        ndjson_line(&ev)
                    });
                    let mut r = Response::new(stream_body(lines));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/x-ndjson"),
                    );
                    r
                }
                Err(e) => worker_error(e),
            }
        }
        (Method::POST, "/worker/v1/classify") => {
            let body: ClassifyBody = match read_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match worker.classify(body.prompt, body.cache_group).await {
                Ok(c) => json_response(StatusCode::OK, &json!(c)),
                Err(e) => worker_error(e),
            }
        }
        (Method::GET, "/worker/v1/load") => match worker.load().await {
            Ok(l) => json_response(StatusCode::OK, &json!(l)),
            Err(e) => worker_error(e),
        },
        (Method::GET, "/health") if drain.is_draining() => error(
            StatusCode::SERVICE_UNAVAILABLE,
            WorkErrorKind::Unavailable,
            "worker draining".into(),
        ),
        (Method::GET, "/health") => match worker.health().await {
            Ok(()) => json_response(
                StatusCode::OK,
                &json!({"status": "ok", "worker": worker.name()}),
            ),
            Err(e) => worker_error(e),
        },
        (m, p) => error(
            StatusCode::NOT_FOUND,
            WorkErrorKind::BadRequest,
            format!("no route for {m} {p}"),
        ),
    }
}

impl tower::Service<Request<Incoming>> for WorkerServer {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let worker = self.worker.clone();
        let drain = self.drain.clone();
        Box::pin(async move { Ok(handle(worker, drain, req).await) })
    }
}
