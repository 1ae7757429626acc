//! Turns the prompt (text, token ids or chat messages) into token ids and
//! checks it against the limits: too long is 413, too long with the
//! output asked for is 400 naming `max_tokens`. Text is tokenized only as
//! far as the tightest limit needs (see `bounded`), so a huge prompt is
//! refused at the cost of the limit, not of its size.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use super::bounded::{Bounded, encode_bounded};
use super::ctx::{BoxFut, ModelInfo, Parsed, Tokenized};
use crate::api::PromptInput;
use crate::error::GatewayError;
use crate::telemetry as tm;

/// Prompts longer than this (bytes) are tokenized off the async threads.
const BLOCKING_BYTES: usize = 16 << 10;

/// Prompt ids down: [`Parsed`] in, [`Tokenized`] to the inner service.
#[derive(Clone)]
pub struct Tokenize<S> {
    inner: S,
    model: Arc<ModelInfo>,
    /// The server's prompt limit: `server.max_prompt_tokens` within the
    /// model's context.
    limit: usize,
}

impl<S> Tokenize<S> {
    /// `max_prompt_tokens` is the server's setting (0: the model's
    /// context).
    pub fn new(inner: S, model: Arc<ModelInfo>, max_prompt_tokens: usize) -> Tokenize<S> {
        let context = model.max_context;
        let limit = match max_prompt_tokens {
            0 => context,
            n => n.min(context),
        };
        Tokenize {
            inner,
            model,
            limit,
        }
    }
}

/// The tenant's `limits.max_prompt_tokens`, if it has one.
fn tenant_limit(ctx: &Parsed) -> Option<usize> {
    let e = ctx.tenant.entry.as_ref()?;
    e.policy.limits.max_prompt_tokens.map(|n| n as usize)
}

/// Refuses a prompt a prefix of which has `counted` tokens, naming the
/// tightest limit (the tenant's is counted as admission counts it).
fn too_long(server: usize, ctx: &Parsed, counted: usize) -> GatewayError {
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
fn tokenize(
    model: &ModelInfo,
    server: usize,
    ctx: &Parsed,
) -> Result<(Vec<u32>, Option<String>), GatewayError> {
    let limit = tenant_limit(ctx).map_or(server, |t| t.min(server));
    // Tokenized only as far as the limit needs: a refused prompt costs in
    // proportion to the limit, not to the body.
    let encode = |text: &str, add_bos: bool, field: &str| match encode_bounded(
        &model.tokenizer,
        text,
        add_bos,
        limit,
    ) {
        Ok(Bounded::Whole(ids)) => Ok(ids),
        Ok(Bounded::Over { counted }) => Err(too_long(server, ctx, counted)),
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

fn check_lengths(
    model: &ModelInfo,
    server: usize,
    ctx: &Parsed,
    prompt: &[u32],
) -> Result<(), GatewayError> {
    let context = model.max_context;
    let n = prompt.len();
    if n > server {
        return Err(GatewayError::PromptTooLong {
            tokens: n,
            limit: server,
        });
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

/// The prompt tokenized (off the async threads when it is big) and
/// checked against the limits.
async fn run(model: Arc<ModelInfo>, server: usize, ctx: Parsed) -> Result<Tokenized, GatewayError> {
    let big = match &ctx.params.input {
        PromptInput::Text(t) => t.len() > BLOCKING_BYTES,
        PromptInput::Messages(m) => {
            m.iter().map(|m| m.content.len()).sum::<usize>() > BLOCKING_BYTES
        }
        PromptInput::Tokens(_) => false,
    };
    let (r, ctx) = if big {
        let m = model.clone();
        tokio::task::spawn_blocking(move || (tokenize(&m, server, &ctx), ctx))
            .await
            .map_err(|e| GatewayError::Internal(format!("tokenizer task: {e}")))?
    } else {
        (tokenize(&model, server, &ctx), ctx)
    };
    let (prompt, prompt_text) = r?;
    check_lengths(&model, server, &ctx, &prompt)?;
    Ok(Tokenized {
        parsed: ctx,
        prompt,
        prompt_text,
    })
}

impl<S> Service<Parsed> for Tokenize<S>
where
    S: Service<Tokenized, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = BoxFut<S::Response>;

    /// Always ready: the inner service is readied for each request by
    /// `oneshot`, on its own clone.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: Parsed) -> Self::Future {
        let inner = self.inner.clone();
        let (model, limit) = (self.model.clone(), self.limit);
        Box::pin(async move { inner.oneshot(run(model, limit, ctx).await?).await })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::fixture::{CONTEXT, echo, model, parsed};
    use super::*;

    async fn call(max_prompt_tokens: usize, body: &str) -> Result<Tokenized, GatewayError> {
        Tokenize::new(echo::<Tokenized>(), model(), max_prompt_tokens)
            .oneshot(parsed(body))
            .await
    }

    #[tokio::test]
    async fn text_becomes_the_tokenizers_ids() {
        let t = call(
            0,
            r#"{"prompt": "hello world", "max_tokens": 2, "echo": true}"#,
        )
        .await
        .unwrap();
        assert_eq!(t.prompt, model().prompt_ids("hello world").unwrap());
        assert_eq!(t.prompt_text.as_deref(), Some("hello world"));
        let t = call(0, r#"{"prompt": [5, 6, 7], "max_tokens": 2}"#)
            .await
            .unwrap();
        assert_eq!((t.prompt.as_slice(), t.prompt_text), (&[5, 6, 7][..], None));
    }

    #[tokio::test]
    async fn prompts_past_a_limit_are_refused_naming_it() {
        let text = "word ".repeat(40);
        let body = format!(r#"{{"prompt": "{text}", "max_tokens": 1}}"#);
        // The server's limit, then the model's context when it has none.
        let e = call(8, &body).await.err().unwrap();
        assert!(
            matches!(e, GatewayError::PromptTooLong { limit: 8, .. }),
            "{e}"
        );
        let e = call(
            0,
            &format!(
                r#"{{"prompt": "{}", "max_tokens": 1}}"#,
                "word ".repeat(100)
            ),
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(e, GatewayError::PromptTooLong { limit: CONTEXT, .. }),
            "{e}"
        );
        // Fits alone, not with the output asked for.
        let e = call(0, r#"{"prompt": [1, 2, 3], "max_tokens": 62}"#)
            .await
            .err()
            .unwrap();
        assert_eq!(e.param(), Some("max_tokens"), "{e}");
        assert!(
            call(0, r#"{"prompt": [1, 2, 3], "max_tokens": 61}"#)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn token_ids_past_the_vocabulary_are_refused() {
        let e = call(0, r#"{"prompt": [1, 266], "max_tokens": 1}"#)
            .await
            .err()
            .unwrap();
        assert_eq!(e.param(), Some("prompt"), "{e}");
    }
}
