//! Placement: which workers to try, in order (`policy.placement`). No
//! healthy worker is 503. The cost-model placement of DESIGN.md section 5
//! replaces the order here without touching the layers around it.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::ctx::{AppState, GenCtx};
use crate::error::GatewayError;

#[derive(Clone)]
pub struct PlaceLayer {
    state: Arc<AppState>,
}

impl PlaceLayer {
    pub fn new(state: Arc<AppState>) -> PlaceLayer {
        PlaceLayer { state }
    }
}

impl<S> Layer<S> for PlaceLayer {
    type Service = Place<S>;
    fn layer(&self, inner: S) -> Place<S> {
        Place {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Place<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S> Service<GenCtx> for Place<S>
where
    S: Service<GenCtx, Error = GatewayError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = super::ctx::BoxFut<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut ctx: GenCtx) -> Self::Future {
        ctx.candidates = self.state.pool.candidates(self.state.policy.placement);
        if ctx.candidates.is_empty() {
            return Box::pin(futures::future::ready(Err(GatewayError::NoHealthyWorker(
                String::new(),
            ))));
        }
        Box::pin(self.inner.call(ctx))
    }
}
