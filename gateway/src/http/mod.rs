//! HTTP plumbing shared by the gateway and `cake worker`: the body type,
//! the accept loop, and the one place errors become responses.

mod body;
mod error;
mod server;

pub use body::{Body, full, json_response, stream_body};
pub use error::{error_body, error_response};
pub use server::{ServerHandle, serve};
