//! HTTP plumbing shared by the gateway and `cake worker`: the body type,
//! the accept loop, and the one place errors become responses.

mod body;
mod drain;
mod error;
mod server;

pub use body::{Body, full, json_response, stream_body};
pub use drain::{Cutoff, DrainSignal, DrainState};
pub use error::{error_body, error_response, gateway_cutoff};
pub use server::{DrainReport, ServerHandle, serve};
