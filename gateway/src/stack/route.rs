//! Which path goes where: the generation endpoints to the generation
//! stack, the rest to small handlers.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode, header};
use serde_json::json;
use tower::Service;

use super::ctx::{AppState, BoxFut};
use crate::api::Api;
use crate::error::GatewayError;
use crate::http::{Body, full, json_response};
use crate::telemetry;

#[derive(Clone)]
pub struct Router<G> {
    generate: G,
    state: Arc<AppState>,
}

impl<G> Router<G> {
    pub fn new(generate: G, state: Arc<AppState>) -> Router<G> {
        Router { generate, state }
    }
}

fn health(state: &AppState) -> Response<Body> {
    if state.drain.is_draining() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "draining", "workers_up": state.pool.healthy()}),
        );
    }
    let workers: Vec<_> = state
        .pool
        .slots()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"name": s.name(), "kind": s.worker.kind().as_str(), "up": s.is_up(),
                   "in_flight": state.admission.in_flight(i)})
        })
        .collect();
    let up = state.pool.healthy();
    let status = if up > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({"status": if up > 0 { "ok" } else { "no healthy worker" },
                "workers_up": up, "workers": workers}),
    )
}

fn models(state: &AppState) -> Response<Body> {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let m = &state.model;
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{
            "id": m.name, "object": "model", "created": created, "owned_by": "cake",
            "root": m.name, "max_model_len": m.max_context,
        }]}),
    )
}

fn metrics() -> Response<Body> {
    let mut r = Response::new(full(telemetry::render()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

impl<G, B> Service<Request<B>> for Router<G>
where
    G: Service<Request<B>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    G::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFut<Response<Body>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        // The generation stack's readiness is taken per request (below),
        // so that a busy generation path never blocks /health.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let api = match (req.method(), req.uri().path()) {
            (&Method::POST, "/v1/completions") => Some(Api::Completions),
            (&Method::POST, "/v1/chat/completions") => Some(Api::Chat),
            _ => None,
        };
        if let Some(api) = api {
            req.extensions_mut().insert(api);
            let svc = self.generate.clone();
            return Box::pin(tower::ServiceExt::oneshot(svc, req));
        }
        let resp = match (req.method(), req.uri().path()) {
            (&Method::GET, "/health") => Ok(health(&self.state)),
            (&Method::GET, "/v1/models") => Ok(models(&self.state)),
            (&Method::GET, "/metrics") => Ok(metrics()),
            (m, p) => Err(GatewayError::NotFound {
                method: m.to_string(),
                path: p.to_string(),
            }),
        };
        Box::pin(futures::future::ready(resp))
    }
}
