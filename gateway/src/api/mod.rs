//! The OpenAI-compatible API: request parsing and validation (`request`),
//! the chat template (`chat`), and the JSON a client gets back (`render`).

mod chat;
mod fields;
mod render;
mod request;

pub use chat::ChatTemplate;
pub use render::{Renderer, usage_json};
pub use request::{Api, ChatMessage, GenParams, PromptInput, parse_request};
