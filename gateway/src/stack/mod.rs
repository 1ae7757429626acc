//! The gateway's request path, composed in one place ([`build`]):
//!
//! ```text
//! trace (request id, span, status metrics, errors → HTTP)
//!  ▶ auth (API key → tenant)
//!  ▶ route: /health, /metrics, /v1/models answered here; generation ▼
//!  ▶ parse + validate (body limit, fields, model)
//!  ▶ tokenize (chat template, prompt limits)
//!  ▶ classify (one presence lookup: cached or fresh)
//!  ▶ admit (tenant limits, SLO shedding, a dispatch slot or the fair queue)
//!  ▶ place (`cake_policy::Placer`: the chosen worker first, then the rest)
//!  ▶ dispatch (submit, retry before the first byte, respond or stream)
//! ```
//!
//! No layer is assembled anywhere else. Each layer holds only the handles
//! it uses, and the generation request grows by stage type
//! ([`ctx::Parsed`] ▶ `Tokenized` ▶ `Classified` ▶ `Holding` ▶ `Placed`):
//! a layer moved above the one that fills in what it reads does not
//! compile.

mod admit;
mod auth;
mod bounded;
mod classify;
mod ctx;
mod dispatch;
mod finish;
#[cfg(test)]
mod fixture;
mod parse;
mod place;
mod route;
mod stream;
mod tokenize;
mod trace;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tower::ServiceBuilder;
use tower::layer::layer_fn;
use tower::util::BoxCloneSyncService;

pub use ctx::{AppState, ModelInfo, Tenant};

use crate::http::Body;

/// The whole gateway service, ready for the accept loop.
pub type GatewayService = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// Builds the stack, top to bottom.
pub fn build(state: Arc<AppState>) -> GatewayService {
    let (model, pool, admission) = (&state.model, &state.pool, &state.admission);
    let server = &state.server;
    let limits = parse::BodyLimits::new(server);
    let generate = ServiceBuilder::new()
        .layer(layer_fn(|s| parse::Parse::new(s, &model.name, limits)))
        .layer(layer_fn(|s| {
            tokenize::Tokenize::new(s, model.clone(), server.max_prompt_tokens)
        }))
        .layer(layer_fn(|s| {
            classify::Classify::new(s, pool.clone(), admission.clone())
        }))
        .layer(layer_fn(|s| admit::Admit::new(s, admission.clone())))
        .layer(layer_fn(|s| place::Place::new(s, admission.clone())))
        .service(dispatch::Dispatch::new(
            pool.clone(),
            admission.clone(),
            model.clone(),
            server,
        ));
    let svc = ServiceBuilder::new()
        .layer(trace::TraceLayer)
        .layer(auth::AuthLayer::new(state.admission.clone()))
        .service(route::Router::new(generate, state.clone()));
    BoxCloneSyncService::new(svc)
}
