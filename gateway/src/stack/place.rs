//! Placement: the worker chosen by `policy.placement`
//! ([`cake_policy::Placer`], fed with each worker's last load report plus
//! the in-flight ledger, the classify step's stored tokens and the worker
//! computing more of the prefix now) first, then the other healthy workers
//! for retries. No healthy worker is 503. The request's chunks go into the
//! in-flight prefix registry under the chosen worker until it ends.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::ctx::{AppState, GenCtx};
use crate::admission::PlaceRequest;
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
        let req = PlaceRequest {
            prompt: &ctx.prompt,
            cached_tokens: ctx.stored_tokens,
            cache_group: &ctx.tenant.cache_group,
            chunks: ctx.chunks.as_ref(),
        };
        let Some(admitted) = ctx.admitted.as_mut() else {
            return Box::pin(futures::future::ready(Err(GatewayError::Internal(
                "placement before admission".into(),
            ))));
        };
        match self.state.admission.place(admitted, &req) {
            Ok(order) => {
                ctx.candidates = order;
                Box::pin(self.inner.call(ctx))
            }
            Err(e) => Box::pin(futures::future::ready(Err(e))),
        }
    }
}
