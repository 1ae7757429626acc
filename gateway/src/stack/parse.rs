//! Reads the body (bounded in bytes and time), parses and validates it,
//! and checks the model: the HTTP request becomes a [`GenCtx`].

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cake_engine::worker::RequestClass;
use http::Request;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use super::ctx::{AppState, BoxFut, GenCtx, RequestId, RequestMeta, Tenant};
use crate::api::{Api, parse_request};
use crate::error::GatewayError;

#[derive(Clone)]
pub struct ParseLayer {
    state: Arc<AppState>,
}

impl ParseLayer {
    pub fn new(state: Arc<AppState>) -> ParseLayer {
        ParseLayer { state }
    }
}

impl<S> Layer<S> for ParseLayer {
    type Service = Parse<S>;
    fn layer(&self, inner: S) -> Parse<S> {
        Parse {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Parse<S> {
    inner: S,
    state: Arc<AppState>,
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

impl<S, B> Service<Request<B>> for Parse<S>
where
    S: Service<GenCtx, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = BoxFut<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let limit = state.server.max_body_bytes;
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            let timeout = Duration::from_millis(state.server.read_timeout_ms);
            let bytes = read_body(body, limit, timeout).await?;
            let api = parts
                .extensions
                .get::<Api>()
                .copied()
                .unwrap_or(Api::Completions);
            let params = parse_request(api, &bytes, state.server.chat_default_max_tokens)?;
            if let Some(m) = &params.model
                && *m != state.model.name
            {
                return Err(GatewayError::UnknownModel(m.clone()));
            }
            let rid = parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or_else(|| RequestId {
                    id: "internal".into(),
                    received: std::time::Instant::now(),
                    meta: Arc::new(RequestMeta::default()),
                });
            let tenant = parts
                .extensions
                .get::<Tenant>()
                .cloned()
                .unwrap_or_else(Tenant::default_tenant);
            let ctx = GenCtx {
                rid,
                tenant,
                params,
                prompt: Vec::new(),
                prompt_text: None,
                class: RequestClass::Fresh,
                cached_tokens: 0,
                stored_tokens: 0,
                chunks: None,
                candidates: Vec::new(),
                admitted: None,
            };
            inner.call(ctx).await
        })
    }
}
