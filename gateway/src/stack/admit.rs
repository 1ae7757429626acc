//! Admission: tenant quotas, weighted fair queues, priorities and SLO
//! shedding arrive with issue 6. This layer holds their place in the
//! stack and passes every request through; its permits will be taken in
//! `poll_ready`.

use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::ctx::GenCtx;

#[derive(Clone, Default)]
pub struct AdmitLayer;

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Admit<S> {
        Admit { inner }
    }
}

#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
}

impl<S: Service<GenCtx>> Service<GenCtx> for Admit<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ctx: GenCtx) -> S::Future {
        self.inner.call(ctx)
    }
}
