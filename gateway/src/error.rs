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
    /// No worker is up, or every one tried failed; `retry_after`: when
    /// the next health check may bring one back.
    #[error("no healthy worker could take the request{detail}")]
    NoHealthyWorker {
        detail: String,
        retry_after: Duration,
    },
    /// Every worker tried was full; `retry_after`: the predicted time
    /// until a dispatch slot frees.
    #[error("every worker is full{detail}")]
    Overloaded {
        detail: String,
        retry_after: Duration,
    },
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
            NoHealthyWorker { .. }
            | Overloaded { .. }
            | WorkerFailed { .. }
            | WorkerTimeout { .. } => Fault::Worker,
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
            NoHealthyWorker { .. } | Overloaded { .. } | ShuttingDown => "service_unavailable",
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
            NoHealthyWorker { .. } => "no_healthy_worker",
            Overloaded { .. } => "workers_overloaded",
            ShuttingDown => "shutting_down",
            WorkerFailed { .. } => "worker_failed",
            WorkerTimeout { .. } => "worker_timeout",
            Internal(_) => "internal_error",
        }
    }

    /// When to come back (the `Retry-After` header), for the refusals that
    /// say: a limit's or the queue's predicted wait, a full fleet's time
    /// until a slot frees, the next health check.
    pub fn retry_after(&self) -> Option<Duration> {
        use GatewayError::*;
        match self {
            RateLimited { retry_after, .. }
            | NoHealthyWorker { retry_after, .. }
            | Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The same error with `detail` added to its message (only
    /// [`GatewayError::NoHealthyWorker`] has one; others are unchanged).
    pub fn with_detail(self, detail: String) -> GatewayError {
        match self {
            GatewayError::NoHealthyWorker { retry_after, .. } => GatewayError::NoHealthyWorker {
                detail,
                retry_after,
            },
            other => other,
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
