//! Admission ([`crate::admission::Admission::admit`], which says the
//! order: tenant limits, predicted wait against the queue deadline, SLO
//! shedding, a dispatch slot or the fair queue). The request waits here
//! for its slot; what it is admitted with travels down in
//! [`GenCtx::admitted`].
//!
//! It admits in `call`, not `poll_ready`: which tenant's queue, which
//! share, the prompt's cost are the request's, which `poll_ready` does not
//! see.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::ctx::{AppState, BoxFut, GenCtx};
use crate::admission::{AdmitRequest, PlaceRequest};
use crate::error::GatewayError;

#[derive(Clone)]
pub struct AdmitLayer {
    state: Arc<AppState>,
}

impl AdmitLayer {
    pub fn new(state: Arc<AppState>) -> AdmitLayer {
        AdmitLayer { state }
    }
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    state: Arc<AppState>,
}

async fn admit(state: &AppState, ctx: &mut GenCtx) -> Result<(), GatewayError> {
    let req = AdmitRequest {
        tenant: &ctx.tenant.name,
        entry: ctx.tenant.entry.as_deref(),
        place: PlaceRequest {
            prompt: &ctx.prompt,
            cached_tokens: ctx.cached_tokens,
            cache_group: &ctx.tenant.cache_group,
            chunks: None,
        },
    };
    ctx.admitted = Some(state.admission.admit(&req).await?);
    Ok(())
}

impl<S> Service<GenCtx> for Admit<S>
where
    S: Service<GenCtx, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = BoxFut<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut ctx: GenCtx) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            admit(&state, &mut ctx).await?;
            inner.call(ctx).await
        })
    }
}
