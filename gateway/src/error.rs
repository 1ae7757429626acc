//! The gateway's one error type. Each error knows who is at fault, whether
//! another worker may be tried, and a stable [`GatewayError::error_type`]
//! used both as the metric label and as the API error's `type`. Errors
//! become HTTP responses in exactly one place: `http::error`.

use std::time::Duration;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request is wrong: fixing it is the client's job.
    Client,
    /// The tenant is over a limit or shed: later may work.
    TenantLimit,
    /// A worker failed or is unreachable.
    Worker,
    /// A bug or fault in the gateway.
    Internal,
}

/// Everything that can go wrong with a request at the gateway.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("`{field}`: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// `tokens` counts what was tokenized before stopping: a prompt far
    /// over the limit is not tokenized to its end.
    #[error("the prompt is over the limit of {limit} tokens ({tokens} counted)")]
    PromptTooLong { tokens: usize, limit: usize },
    #[error("the client sent its request too slowly or broke it off: {0}")]
    BodyRead(String),
    #[error("invalid API key")]
    Unauthorized,
    /// A tenant limit, the queue or the TTFT objective refused the
    /// request; `limit` names which (the API error's `code`).
    #[error("rate limited ({limit}): {reason}")]
    RateLimited {
        limit: &'static str,
        reason: String,
        retry_after: Duration,
    },
    #[error("no healthy worker could take the request{0}")]
    NoHealthyWorker(String),
    #[error("worker {worker} failed: {message}")]
    WorkerFailed { worker: String, message: String },
    #[error("worker {worker} did not answer within {after:?}")]
    WorkerTimeout { worker: String, after: Duration },
    /// The server was draining (SIGTERM/SIGINT) and its drain deadline
    /// passed before the request finished.
    #[error("the server is shutting down; the request did not finish within the drain deadline")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> GatewayError {
        GatewayError::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn fault(&self) -> Fault {
        use GatewayError::*;
        match self {
            MalformedJson(_)
            | InvalidField { .. }
            | UnknownModel(_)
            | NotFound { .. }
            | BodyTooLarge { .. }
            | PromptTooLong { .. }
            | BodyRead(_)
            | Unauthorized => Fault::Client,
            RateLimited { .. } => Fault::TenantLimit,
            NoHealthyWorker(_) | WorkerFailed { .. } | WorkerTimeout { .. } => Fault::Worker,
            ShuttingDown | Internal(_) => Fault::Internal,
        }
    }

    /// Whether the same request may succeed on another worker.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::WorkerFailed { .. } | GatewayError::WorkerTimeout { .. }
        )
    }

    /// Stable name: the `type` of the API error and the metric label.
    pub fn error_type(&self) -> &'static str {
        use GatewayError::*;
        match self {
            MalformedJson(_) | InvalidField { .. } | BodyRead(_) => "invalid_request_error",
            UnknownModel(_) | NotFound { .. } => "not_found_error",
            BodyTooLarge { .. } | PromptTooLong { .. } => "request_too_large",
            Unauthorized => "authentication_error",
            RateLimited { .. } => "rate_limit_error",
            NoHealthyWorker(_) | ShuttingDown => "service_unavailable",
            WorkerFailed { .. } => "worker_error",
            WorkerTimeout { .. } => "worker_timeout",
            Internal(_) => "internal_error",
        }
    }

    /// A finer, stable code (the API error's `code`).
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            MalformedJson(_) => "invalid_json",
            InvalidField { .. } => "invalid_value",
            BodyRead(_) => "body_read_failed",
            UnknownModel(_) => "model_not_found",
            NotFound { .. } => "not_found",
            BodyTooLarge { .. } => "body_too_large",
            PromptTooLong { .. } => "prompt_too_long",
            Unauthorized => "invalid_api_key",
            RateLimited { limit, .. } => limit,
            NoHealthyWorker(_) => "no_healthy_worker",
            ShuttingDown => "shutting_down",
            WorkerFailed { .. } => "worker_failed",
            WorkerTimeout { .. } => "worker_timeout",
            Internal(_) => "internal_error",
        }
    }

    /// The request field at fault, if one is.
    pub fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidField { field, .. } => Some(field),
            GatewayError::UnknownModel(_) => Some("model"),
            GatewayError::PromptTooLong { .. } => Some("prompt"),
            _ => None,
        }
    }
}
