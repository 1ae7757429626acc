//! One presence lookup for the prompt's chunks: the request is `cached`
//! (some chunks are stored) or `fresh`. A lookup that fails or that no
//! worker can answer makes it `fresh`; it never fails the request.

use std::sync::Arc;
use std::task::{Context, Poll};

use cake_engine::worker::RequestClass;
use tower::{Layer, Service};

use super::ctx::{AppState, BoxFut, GenCtx};
use crate::error::GatewayError;

#[derive(Clone)]
pub struct ClassifyLayer {
    state: Arc<AppState>,
}

impl ClassifyLayer {
    pub fn new(state: Arc<AppState>) -> ClassifyLayer {
        ClassifyLayer { state }
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Classify<S> {
        Classify {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Classify<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S> Service<GenCtx> for Classify<S>
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
        let pool = self.state.pool.clone();
        Box::pin(async move {
            let found = pool.classify(&ctx.prompt, &ctx.tenant.cache_group).await;
            let cached_tokens = found.as_ref().map_or(0, |c| c.cached_tokens);
            let class = found.and_then(|c| c.class).unwrap_or(if cached_tokens > 0 {
                RequestClass::Cached
            } else {
                RequestClass::Fresh
            });
            ctx.class = class;
            ctx.cached_tokens = cached_tokens;
            ctx.rid.meta.update(|m| m.class = Some(class));
            tracing::Span::current().record("class", class.as_str());
            inner.call(ctx).await
        })
    }
}
