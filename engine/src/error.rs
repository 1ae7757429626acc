use thiserror::Error;

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
