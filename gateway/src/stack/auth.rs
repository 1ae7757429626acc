//! Who is calling: `Authorization: Bearer KEY`, hashed (SHA-256) and looked
//! up in the live tenants. With no tenants configured everyone is the
//! `default` tenant; otherwise a missing or unknown key on `/v1/...` is 401
//! (`/health` and `/metrics` stay open for probes and scrapers).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::{Request, header};
use tower::{Layer, Service};

use super::ctx::{RequestId, Tenant};
use crate::admission::Admission;
use crate::error::GatewayError;

#[derive(Clone)]
pub struct AuthLayer {
    admission: Arc<Admission>,
}

impl AuthLayer {
    pub fn new(admission: Arc<Admission>) -> AuthLayer {
        AuthLayer { admission }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            admission: self.admission.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    admission: Arc<Admission>,
}

fn bearer<B>(req: &Request<B>) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Either<S::Future, Ready<Result<S::Response, GatewayError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let live = self.admission.live();
        let tenant = if live.tenants.is_open() {
            Tenant::default_tenant()
        } else {
            match bearer(&req).and_then(|k| live.tenants.by_key(k)) {
                Some(e) => Tenant {
                    name: e.policy.name.clone(),
                    cache_group: e.policy.cache_group.clone(),
                    entry: Some(e),
                },
                None if req.uri().path().starts_with("/v1/") => {
                    return Either::Right(ready(Err(GatewayError::Unauthorized)));
                }
                None => Tenant::default_tenant(),
            }
        };
        if let Some(rid) = req.extensions().get::<RequestId>() {
            rid.meta.update(|m| m.tenant = Some(tenant.name.clone()));
        }
        tracing::Span::current().record("tenant", tenant.name.as_str());
        req.extensions_mut().insert(tenant);
        Either::Left(self.inner.call(req))
    }
}
