use thiserror::Error;

use crate::worker::WorkErrorKind;

/// Errors of the engine. Each names what was wrong, so a user can fix it.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    #[error("model config: {0}")]
    Config(String),
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(
        "prompt of {tokens} tokens (plus {extra} to generate) exceeds the model's context of {context}"
    )]
    PromptTooLong {
        tokens: usize,
        extra: usize,
        context: usize,
    },
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("kv layout: {0}")]
    KvLayout(String),
    #[error("kernel: {0}")]
    Kernel(#[from] cake_kernels::KernelError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A batched step failed as a whole (a device fault): every request in
    /// it gets this, with the cause.
    #[error("step failed: {0}")]
    Step(String),
    /// A broken invariant inside the engine (a bug), never the request's
    /// fault.
    #[error("internal: {0}")]
    Internal(String),
}

impl EngineError {
    /// Who is at fault and whether another worker may take the request:
    /// the one place an engine error gets its kind (the Worker API's
    /// [`WorkErrorKind`], in process and on the wire alike).
    pub fn kind(&self) -> WorkErrorKind {
        use EngineError::*;
        match self {
            PromptTooLong { .. } | BadRequest(_) => WorkErrorKind::BadRequest,
            Overloaded(_) => WorkErrorKind::Overloaded,
            Checkpoint { .. }
            | Config(_)
            | Tensor { .. }
            | Tokenizer(_)
            | KvLayout(_)
            | Kernel(_)
            | Io(_)
            | Step(_)
            | Internal(_) => WorkErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_say_whose_fault() {
        assert_eq!(
            EngineError::BadRequest("x".into()).kind(),
            WorkErrorKind::BadRequest
        );
        let long = EngineError::PromptTooLong {
            tokens: 10,
            extra: 1,
            context: 8,
        };
        assert_eq!(long.kind(), WorkErrorKind::BadRequest);
        assert_eq!(
            EngineError::Overloaded("full".into()).kind(),
            WorkErrorKind::Overloaded
        );
        assert_eq!(
            EngineError::Internal("invariant".into()).kind(),
            WorkErrorKind::Internal
        );
        assert_eq!(
            EngineError::Step("device".into()).kind(),
            WorkErrorKind::Internal
        );
    }

    #[test]
    fn kinds_travel_as_snake_case_and_unknown_ones_read_as_internal() {
        let k: WorkErrorKind = serde_json::from_str("\"overloaded\"").unwrap();
        assert_eq!(k, WorkErrorKind::Overloaded);
        assert_eq!(
            serde_json::to_string(&WorkErrorKind::BadRequest).unwrap(),
            "\"bad_request\""
        );
        let k: WorkErrorKind = serde_json::from_str("\"from_a_newer_worker\"").unwrap();
        assert_eq!(k, WorkErrorKind::Internal);
    }
}
