//! Turns the prompt (text, token ids or chat messages) into token ids and
//! checks it against the limits: too long is 413, too long with the
//! output asked for is 400 naming `max_tokens`. Text is tokenized only as
//! far as the tightest limit needs (see `bounded`), so a huge prompt is
//! refused at the cost of the limit, not of its size.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::bounded::{Bounded, encode_bounded};
use super::ctx::{AppState, BoxFut, GenCtx};
use crate::api::PromptInput;
use crate::error::GatewayError;
use crate::telemetry as tm;

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

/// The server's prompt limit: `server.max_prompt_tokens` within the
/// model's context.
fn server_limit(state: &AppState) -> usize {
    let context = state.model.max_context;
    match state.server.max_prompt_tokens {
        0 => context,
        n => n.min(context),
    }
}

/// The tenant's `limits.max_prompt_tokens`, if it has one.
fn tenant_limit(ctx: &GenCtx) -> Option<usize> {
    let e = ctx.tenant.entry.as_ref()?;
    e.policy.limits.max_prompt_tokens.map(|n| n as usize)
}

/// Refuses a prompt a prefix of which has `counted` tokens, naming the
/// tightest limit (the tenant's is counted as admission counts it).
fn too_long(state: &AppState, ctx: &GenCtx, counted: usize) -> GatewayError {
    let server = server_limit(state);
    match tenant_limit(ctx) {
        Some(t) if t < server => {
            tm::refused(&ctx.tenant.name, "max_prompt_tokens");
            GatewayError::PromptTooLong {
                tokens: counted,
                limit: t,
            }
        }
        _ => GatewayError::PromptTooLong {
            tokens: counted,
            limit: server,
        },
    }
}

/// The prompt's ids and, for `echo`, its text.
fn tokenize(state: &AppState, ctx: &GenCtx) -> Result<(Vec<u32>, Option<String>), GatewayError> {
    let model = &state.model;
    let limit = tenant_limit(ctx).map_or(server_limit(state), |t| t.min(server_limit(state)));
    // Tokenized only as far as the limit needs: a refused prompt costs in
    // proportion to the limit, not to the body.
    let encode = |text: &str, add_bos: bool, field: &str| match encode_bounded(
        &model.tokenizer,
        text,
        add_bos,
        limit,
    ) {
        Ok(Bounded::Whole(ids)) => Ok(ids),
        Ok(Bounded::Over { counted }) => Err(too_long(state, ctx, counted)),
        Err(e) => Err(GatewayError::field(
            field,
            format!("cannot be tokenized: {e}"),
        )),
    };
    let echo = ctx.params.echo;
    match &ctx.params.input {
        PromptInput::Text(t) => Ok((
            encode(t, model.tokenizer.add_bos(), "prompt")?,
            echo.then(|| t.clone()),
        )),
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
        PromptInput::Messages(msgs) => {
            let (text, add_bos) = model.chat_text(msgs, ctx.params.add_generation_prompt)?;
            Ok((encode(&text, add_bos, "messages")?, None))
        }
    }
}

fn check_lengths(state: &AppState, ctx: &GenCtx) -> Result<(), GatewayError> {
    let context = state.model.max_context;
    let limit = server_limit(state);
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
