//! A `cake worker` over HTTP. The wire protocol (served by
//! [`super::serve_worker`]):
//!
//! - `POST /worker/v1/submit`, body a `WorkRequest` as JSON: the answer
//!   streams one `WorkEvent` per line (NDJSON). Closing the connection
//!   cancels the request.
//! - `POST /worker/v1/classify`, body `{"prompt": [ids], "cache_group"}`:
//!   a `Classification`.
//! - `GET /worker/v1/load`: a `LoadReport`.
//! - `GET /health`: 200 when it takes requests.

use std::time::Duration;

use cake_engine::worker::{Classification, LoadReport, WorkEvent, WorkRequest};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use http::Method;

use super::client::{HttpClient, body_bytes, lines};
use super::{EventStream, Worker, WorkerError};
use crate::config::WorkerKind;

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct ClassifyBody {
    pub prompt: Vec<u32>,
    #[serde(default)]
    pub cache_group: String,
}

/// See the module docs.
pub struct CakeWorker {
    name: String,
    http: HttpClient,
}

impl CakeWorker {
    pub fn new(name: &str, url: &str, timeout: Duration) -> CakeWorker {
        CakeWorker {
            name: name.to_string(),
            http: HttpClient::new(url, timeout, None),
        }
    }
}

impl Worker for CakeWorker {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> WorkerKind {
        WorkerKind::Cake
    }

    fn submit(&self, req: WorkRequest) -> BoxFuture<'static, Result<EventStream, WorkerError>> {
        let http = self.http.clone();
        async move {
            let body = serde_json::to_vec(&req)
                .map_err(|e| WorkerError::Internal(format!("encoding request: {e}")))?;
            let resp = http
                .send(Method::POST, "/worker/v1/submit", Some(body))
                .await?;
            let events = lines(body_bytes(resp.into_body())).filter_map(|line| async move {
                match line {
                    Ok(l) if l.trim().is_empty() => None,
                    Ok(l) => Some(serde_json::from_str::<WorkEvent>(&l).map_err(|e| {
                        WorkerError::Internal(format!("bad event from worker: {e}: {l}"))
                    })),
                    Err(e) => Some(Err(e)),
                }
            });
            let s: EventStream = Box::pin(events);
            Ok(s)
        }
        .boxed()
    }

    fn classify(
        &self,
        prompt: Vec<u32>,
        cache_group: String,
    ) -> BoxFuture<'static, Result<Classification, WorkerError>> {
        let http = self.http.clone();
        async move {
            let body = serde_json::to_vec(&ClassifyBody {
                prompt,
                cache_group,
            })
            .map_err(|e| WorkerError::Internal(e.to_string()))?;
            http.json(Method::POST, "/worker/v1/classify", Some(body))
                .await
        }
        .boxed()
    }

    fn load(&self) -> BoxFuture<'static, Result<LoadReport, WorkerError>> {
        let http = self.http.clone();
        async move { http.json(Method::GET, "/worker/v1/load", None).await }.boxed()
    }

    fn health(&self) -> BoxFuture<'static, Result<(), WorkerError>> {
        let http = self.http.clone();
        async move {
            http.json::<serde_json::Value>(Method::GET, "/health", None)
                .await
                .map(|_| ())
        }
        .boxed()
    }
}
