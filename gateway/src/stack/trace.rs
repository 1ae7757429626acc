//! The top layer: a request id (the client's `x-request-id`, or a new
//! one), one `tracing` span per request, the request counter, and the one
//! call that turns an error into its HTTP response.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use super::ctx::{BoxFut, RequestId, RequestMeta};
use crate::error::{Fault, GatewayError};
use crate::http::{Body, error_response};
use crate::telemetry as tm;

#[derive(Clone, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A new id: process start (µs, base 36) and a sequence number, unique
/// enough across restarts and replicas for logs.
fn new_id() -> String {
    static START: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| {
        let us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        base36(us)
    });
    format!("{start}-{}", base36(SEQ.fetch_add(1, Ordering::Relaxed)))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// The client's id if it is short and printable.
fn client_id<B>(req: &Request<B>) -> Option<String> {
    let v = req.headers().get("x-request-id")?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| v.to_string())
}

impl<S, B> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Errors of inner layers are answered per request, never here.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let id = client_id(&req).unwrap_or_else(new_id);
        let meta = Arc::new(RequestMeta::default());
        let rid = RequestId {
            id: id.clone(),
            received: Instant::now(),
            meta: meta.clone(),
        };
        req.extensions_mut().insert(rid);
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let counted = path.starts_with("/v1/") && path != "/v1/models";
        let span = tracing::info_span!(
            "request",
            id = %id,
            %method,
            path = %path,
            tenant = tracing::field::Empty,
            class = tracing::field::Empty,
            worker = tracing::field::Empty,
        );
        let fut: BoxFut<Response<Body>> = {
            let _entered = span.enter();
            Box::pin(inner.call(req))
        };
        Box::pin(
            async move {
                let result = fut.await;
                let m = meta.get();
                let class = m.class.map_or("none", |c| c.as_str());
                let tenant = m.tenant.as_deref().unwrap_or("default");
                let mut resp = match result {
                    Ok(r) => r,
                    Err(e) => {
                        tm::error(e.error_type());
                        match e.fault() {
                            Fault::Client | Fault::TenantLimit => {
                                tracing::info!(error = %e, "request refused")
                            }
                            Fault::Worker => tracing::warn!(error = %e, "request failed"),
                            Fault::Internal => tracing::error!(error = %e, "request failed"),
                        }
                        error_response(&e)
                    }
                };
                if counted {
                    tm::request_done(tenant, class, resp.status().as_u16());
                }
                if let Ok(v) = HeaderValue::from_str(&id) {
                    resp.headers_mut().insert("x-request-id", v);
                }
                Ok(resp)
            }
            .instrument(span),
        )
    }
}
