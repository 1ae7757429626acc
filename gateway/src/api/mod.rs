//! The OpenAI-compatible API: request parsing and validation (`request`,
//! the typed bodies in `body`, their leaf deserializers in `de`), the chat
//! template (`chat`), and the JSON a client gets back (`render`).

mod body;
mod chat;
mod de;
mod render;
mod request;

pub use body::{ChatMessage, PromptInput};
pub use chat::ChatTemplate;
pub use render::{Renderer, usage_json};
pub use request::{Api, GenParams, parse_request};
