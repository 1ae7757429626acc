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
//! No layer is assembled anywhere else.

mod admit;
mod auth;
mod bounded;
mod classify;
mod ctx;
mod dispatch;
mod finish;
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
use tower::util::BoxCloneSyncService;

pub use ctx::{AppState, ModelInfo, Tenant};

use crate::http::Body;

/// The whole gateway service, ready for the accept loop.
pub type GatewayService = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// Builds the stack, top to bottom.
pub fn build(state: Arc<AppState>) -> GatewayService {
    let generate = ServiceBuilder::new()
        .layer(parse::ParseLayer::new(state.clone()))
        .layer(tokenize::TokenizeLayer::new(state.clone()))
        .layer(classify::ClassifyLayer::new(state.clone()))
        .layer(admit::AdmitLayer::new(state.clone()))
        .layer(place::PlaceLayer::new(state.clone()))
        .service(dispatch::Dispatch::new(state.clone()));
    let svc = ServiceBuilder::new()
        .layer(trace::TraceLayer)
        .layer(auth::AuthLayer::new(state.admission.clone()))
        .service(route::Router::new(generate, state));
    BoxCloneSyncService::new(svc)
}
