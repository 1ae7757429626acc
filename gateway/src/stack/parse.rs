//! Reads the body (bounded in bytes and time), parses and validates it,
//! and checks the model: the HTTP request becomes [`Parsed`].

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Service, ServiceExt};

use super::ctx::{BoxFut, Parsed, RequestId, RequestMeta, Tenant};
use crate::api::{Api, parse_request};
use crate::config::ServerConfig;
use crate::error::GatewayError;

/// What parsing needs of the server's settings.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `server.max_body_bytes`.
    pub max_bytes: usize,
    /// `server.read_timeout_ms`: the whole body must arrive within it.
    pub read_timeout: Duration,
    /// `server.chat_default_max_tokens`.
    pub chat_default_max_tokens: usize,
}

impl BodyLimits {
    pub fn new(server: &ServerConfig) -> BodyLimits {
        BodyLimits {
            max_bytes: server.max_body_bytes,
            read_timeout: Duration::from_millis(server.read_timeout_ms),
            chat_default_max_tokens: server.chat_default_max_tokens,
        }
    }
}

/// The top of the generation stack: an HTTP request in, [`Parsed`] down.
#[derive(Clone)]
pub struct Parse<S> {
    inner: S,
    /// The model id clients may send.
    model: Arc<str>,
    limits: BodyLimits,
}

impl<S> Parse<S> {
    pub fn new(inner: S, model: &str, limits: BodyLimits) -> Parse<S> {
        Parse {
            inner,
            model: model.into(),
            limits,
        }
    }
}

async fn read_body<B>(body: B, limit: usize, timeout: Duration) -> Result<Bytes, GatewayError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(GatewayError::BodyRead(format!(
            "no complete body within {timeout:?}"
        ))),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(GatewayError::BodyTooLarge { limit }),
        Ok(Err(e)) => Err(GatewayError::BodyRead(e.to_string())),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// The request's parsed body, checked against the served model.
async fn parse<B>(model: &str, limits: BodyLimits, req: Request<B>) -> Result<Parsed, GatewayError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let limit = limits.max_bytes;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let bytes = read_body(body, limit, limits.read_timeout).await?;
    let api = parts
        .extensions
        .get::<Api>()
        .copied()
        .unwrap_or(Api::Completions);
    let params = parse_request(api, &bytes, limits.chat_default_max_tokens)?;
    if let Some(m) = &params.model
        && *m != *model
    {
        return Err(GatewayError::UnknownModel(m.clone()));
    }
    let rid = parts
        .extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(|| RequestId {
            id: "internal".into(),
            received: tokio::time::Instant::now(),
            meta: Arc::new(RequestMeta::default()),
        });
    let tenant = parts
        .extensions
        .get::<Tenant>()
        .cloned()
        .unwrap_or_else(Tenant::default_tenant);
    Ok(Parsed {
        rid,
        tenant,
        params,
    })
}

impl<S, B> Service<Request<B>> for Parse<S>
where
    S: Service<Parsed, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = BoxFut<S::Response>;

    /// Always ready: the inner service is readied for each request by
    /// `oneshot`, on its own clone.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let (model, limits) = (self.model.clone(), self.limits);
        Box::pin(async move { inner.oneshot(parse(&model, limits, req).await?).await })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use http_body_util::Full;

    use super::super::fixture::echo;
    use super::*;

    fn limits(max_bytes: usize) -> BodyLimits {
        BodyLimits {
            max_bytes,
            read_timeout: Duration::from_secs(5),
            chat_default_max_tokens: 16,
        }
    }

    async fn call(max_bytes: usize, req: Request<Full<Bytes>>) -> Result<Parsed, GatewayError> {
        Parse::new(echo::<Parsed>(), "m", limits(max_bytes))
            .oneshot(req)
            .await
    }

    fn post() -> http::request::Builder {
        Request::builder().method("POST").uri("/v1/completions")
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        // Declared too long: refused before reading.
        let req = post()
            .header(http::header::CONTENT_LENGTH, "100")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let e = call(16, req).await.err().unwrap();
        assert!(matches!(e, GatewayError::BodyTooLarge { limit: 16 }), "{e}");
        // Not declared, longer than the limit when read.
        let body = r#"{"prompt": "a long enough prompt"}"#;
        let req = post().body(Full::new(Bytes::from(body))).unwrap();
        let e = call(16, req).await.err().unwrap();
        assert!(matches!(e, GatewayError::BodyTooLarge { limit: 16 }), "{e}");
    }

    #[tokio::test]
    async fn only_the_served_model_passes() {
        let body = r#"{"model": "other", "prompt": "hi"}"#;
        let req = post().body(Full::new(Bytes::from(body))).unwrap();
        let e = call(1 << 10, req).await.err().unwrap();
        assert!(
            matches!(&e, GatewayError::UnknownModel(m) if m == "other"),
            "{e}"
        );

        let body = r#"{"model": "m", "prompt": "hi", "max_tokens": 3}"#;
        let req = post().body(Full::new(Bytes::from(body))).unwrap();
        let p = call(1 << 10, req).await.unwrap();
        assert_eq!(p.params.options.max_tokens, 3);
        // No request id or tenant set above: the defaults.
        assert_eq!(
            (p.rid.id.as_str(), p.tenant.name.as_str()),
            ("internal", "default")
        );
    }

    #[tokio::test]
    async fn the_tenant_and_request_id_come_from_the_layers_above() {
        let body = r#"{"prompt": "hi"}"#;
        let mut req = post().body(Full::new(Bytes::from(body))).unwrap();
        let tenant = Tenant {
            name: "acme".into(),
            cache_group: "g".into(),
            entry: None,
        };
        req.extensions_mut().insert(tenant);
        req.extensions_mut().insert(RequestId {
            id: "r-1".into(),
            received: tokio::time::Instant::now(),
            meta: Arc::new(RequestMeta::default()),
        });
        let p = call(1 << 10, req).await.unwrap();
        assert_eq!((p.rid.id.as_str(), p.tenant.name.as_str()), ("r-1", "acme"));
        assert_eq!(p.tenant.cache_group, "g");
    }
}
