//! Who is calling. Tenants and API keys arrive with issue 6; until then
//! every request is the `default` tenant in the `default` cache group.

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::ctx::{RequestId, Tenant};

#[derive(Clone, Default)]
pub struct AuthLayer;

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let tenant = Tenant {
            name: "default".into(),
            cache_group: "default".into(),
        };
        if let Some(rid) = req.extensions().get::<RequestId>() {
            rid.meta.update(|m| m.tenant = Some(tenant.name.clone()));
        }
        tracing::Span::current().record("tenant", tenant.name.as_str());
        req.extensions_mut().insert(tenant);
        self.inner.call(req)
    }
}
