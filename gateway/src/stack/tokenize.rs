//! Turns the prompt (text, token ids or chat messages) into token ids and
//! checks it against the limits: too long is 413, too long with the
//! output asked for is 400 naming `max_tokens`.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::ctx::{AppState, BoxFut, GenCtx};
use crate::api::PromptInput;
use crate::error::GatewayError;

/// Prompts longer than this (bytes) are tokenized off the async threads.
const BLOCKING_BYTES: usize = 16 << 10;

#[derive(Clone)]
pub struct TokenizeLayer {
    state: Arc<AppState>,
}

impl TokenizeLayer {
    pub fn new(state: Arc<AppState>) -> TokenizeLayer {
        TokenizeLayer { state }
    }
}

impl<S> Layer<S> for TokenizeLayer {
    type Service = Tokenize<S>;
    fn layer(&self, inner: S) -> Tokenize<S> {
        Tokenize {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Tokenize<S> {
    inner: S,
    state: Arc<AppState>,
}

/// The prompt's ids and, for `echo`, its text.
fn tokenize(state: &AppState, ctx: &GenCtx) -> Result<(Vec<u32>, Option<String>), GatewayError> {
    let model = &state.model;
    let echo = ctx.params.echo;
    match &ctx.params.input {
        PromptInput::Text(t) => Ok((model.prompt_ids(t)?, echo.then(|| t.clone()))),
        PromptInput::Tokens(ids) => {
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= model.vocab_size) {
                return Err(GatewayError::field(
                    "prompt",
                    format!(
                        "token id {bad} is not below the vocabulary size {}",
                        model.vocab_size
                    ),
                ));
            }
            let text = if echo {
                Some(model.tokenizer.decode(ids).map_err(|e| {
                    GatewayError::field("prompt", format!("cannot be decoded: {e}"))
                })?)
            } else {
                None
            };
            Ok((ids.clone(), text))
        }
        PromptInput::Messages(msgs) => Ok((
            model.chat_ids(msgs, ctx.params.add_generation_prompt)?,
            None,
        )),
    }
}

fn check_lengths(state: &AppState, ctx: &GenCtx) -> Result<(), GatewayError> {
    let context = state.model.max_context;
    let limit = match state.server.max_prompt_tokens {
        0 => context,
        n => n.min(context),
    };
    let n = ctx.prompt.len();
    if n > limit {
        return Err(GatewayError::PromptTooLong { tokens: n, limit });
    }
    let max_tokens = ctx.params.options.max_tokens;
    if n + max_tokens > context {
        return Err(GatewayError::field(
            "max_tokens",
            format!(
                "{max_tokens} tokens plus the prompt's {n} exceed the model's context of {context}"
            ),
        ));
    }
    Ok(())
}

impl<S> Service<GenCtx> for Tokenize<S>
where
    S: Service<GenCtx, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = BoxFut<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut ctx: GenCtx) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let big = match &ctx.params.input {
                PromptInput::Text(t) => t.len() > BLOCKING_BYTES,
                PromptInput::Messages(m) => {
                    m.iter().map(|m| m.content.len()).sum::<usize>() > BLOCKING_BYTES
                }
                PromptInput::Tokens(_) => false,
            };
            let (ids, text) = if big {
                let (st, c) = (state.clone(), ctx);
                let (r, c) = tokio::task::spawn_blocking(move || (tokenize(&st, &c), c))
                    .await
                    .map_err(|e| GatewayError::Internal(format!("tokenizer task: {e}")))?;
                ctx = c;
                r?
            } else {
                tokenize(&state, &ctx)?
            };
            ctx.prompt = ids;
            ctx.prompt_text = text;
            check_lengths(&state, &ctx)?;
            inner.call(ctx).await
        })
    }
}
