use thiserror::Error;

/// Errors a kernel reports instead of panicking on bad shapes.
#[derive(Debug, Error)]
pub enum KernelError {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("device mismatch in {op}: tensors live on different devices")]
    Device { op: &'static str },
    #[error("backend {0} is not available in this build")]
    Unavailable(String),
    #[error("{op} needs f32 tensors (bf16 is for matmul weights only)")]
    Dtype { op: &'static str },
    #[error("CUDA: {0}")]
    Cuda(String),
}

pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> KernelError {
    KernelError::Shape {
        op,
        detail: detail.into(),
    }
}
