//! Where a [`GatewayError`] becomes an HTTP response — the only place.
//! The body is OpenAI's: `{"error": {"message", "type", "code", "param"}}`.

use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use super::{Body, Cutoff, json_response};
use crate::error::GatewayError;

fn status(e: &GatewayError) -> StatusCode {
    use GatewayError::*;
    match e {
        MalformedJson(_) | InvalidField { .. } | BodyRead(_) => StatusCode::BAD_REQUEST,
        Unauthorized => StatusCode::UNAUTHORIZED,
        UnknownModel(_) | NotFound { .. } => StatusCode::NOT_FOUND,
        BodyTooLarge { .. } | PromptTooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        NoHealthyWorker { .. } | Overloaded { .. } | ShuttingDown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        WorkerFailed { .. } => StatusCode::BAD_GATEWAY,
        WorkerTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error body alone (also sent as the last event of a broken stream).
pub fn error_body(e: &GatewayError) -> serde_json::Value {
    json!({
        "error": {
            "message": e.to_string(),
            "type": e.error_type(),
            "code": e.code(),
            "param": e.param(),
        }
    })
}

/// The response for `e`.
pub fn error_response(e: &GatewayError) -> Response<Body> {
    let mut r = json_response(status(e), &error_body(e));
    // A draining server cannot say when it will serve again (it will
    // not): the next replica behind the load balancer may, so soon.
    let retry_after = match e {
        GatewayError::ShuttingDown => Some(std::time::Duration::from_secs(1)),
        _ => e.retry_after(),
    };
    if let Some(d) = retry_after {
        let secs = cake_policy::retry_after_secs(d);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
    }
    r
}

/// What the gateway's drain deadline sends: 503 `shutting_down` to a
/// request without an answer yet; to a stream, the same error as its last
/// event, then `[DONE]`.
pub fn gateway_cutoff() -> Cutoff {
    fn response() -> Response<Body> {
        crate::telemetry::error(GatewayError::ShuttingDown.error_type());
        error_response(&GatewayError::ShuttingDown)
    }
    fn tail(h: &http::HeaderMap) -> Option<bytes::Bytes> {
        let sse = h
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !sse {
            return None;
        }
        crate::telemetry::error(GatewayError::ShuttingDown.error_type());
        let mut out = b"data: ".to_vec();
        out.extend(
            serde_json::to_vec(&error_body(&GatewayError::ShuttingDown)).unwrap_or_default(),
        );
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        Some(out.into())
    }
    Cutoff { response, tail }
}
