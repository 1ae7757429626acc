//! A streamed answer: server-sent events (`data: {json}`, a blank line
//! between events, `data: [DONE]` last). A task forwards the worker's
//! events into the body; when the client goes away the body is dropped,
//! the task sees it at once (even while the worker is silent), and drops
//! the worker's event stream, which cancels the work there.

use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use cake_engine::worker::WorkEvent;
use http::{HeaderValue, Response, header};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::ctx::Placed;
use super::finish::{final_usage, gateway_error, record_finished};
use crate::api::{Renderer, usage_json};
use crate::http::{Body, error_body, stream_body};
use crate::telemetry as tm;
use crate::worker::{EventStream, WorkerSlot, event_result, next_event};

fn sse(v: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend(serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Why forwarding stopped early.
enum Stop {
    ClientGone,
}

struct Forward {
    tx: mpsc::Sender<Bytes>,
}

impl Forward {
    /// Sends one chunk; `Err` when the client is gone.
    async fn send(&self, b: Bytes) -> Result<(), Stop> {
        self.tx.send(b).await.map_err(|_| Stop::ClientGone)
    }
}

async fn forward(
    ctx: &Placed,
    slot: &WorkerSlot,
    mut render: Renderer,
    first: WorkEvent,
    mut events: EventStream,
    out: &Forward,
) -> Result<(), Stop> {
    let mut first_token: Option<Instant> = None;
    let mut ev = Some(first);
    let prompt_logprobs = match &ev {
        Some(WorkEvent::PromptLogprobs { logprobs }) => {
            let lp = logprobs.clone();
            ev = None;
            Some(lp)
        }
        _ => None,
    };
    if let Some(v) = render.stream_start(prompt_logprobs.as_deref()) {
        out.send(sse(&v)).await?;
    }
    loop {
        let next = match ev.take() {
            Some(e) => Ok(e),
            None => tokio::select! {
                r = next_event(&mut events, slot.idle_timeout) => r,
                _ = out.tx.closed() => return Err(Stop::ClientGone),
            },
        };
        match next.and_then(event_result) {
            Ok(WorkEvent::PromptLogprobs { .. }) => {}
            Ok(WorkEvent::Token(t)) => {
                first_token.get_or_insert_with(Instant::now);
                if let Some(v) = render.stream_token(&t) {
                    out.send(sse(&v)).await?;
                }
            }
            Ok(WorkEvent::Done {
                finish_reason,
                usage,
            }) => {
                let (usage, ttft_ms) = final_usage(ctx, slot, usage, first_token);
                record_finished(ctx, &usage, first_token);
                out.send(sse(&render.stream_finish(&finish_reason))).await?;
                if ctx.params.include_usage {
                    let u = usage_json(&usage, ctx.class.as_str(), ttft_ms);
                    out.send(sse(&render.stream_usage(u))).await?;
                }
                return out.send(Bytes::from_static(DONE)).await;
            }
            // `event_result` below made every `Error` event an `Err`.
            Ok(WorkEvent::Error { .. }) => {}
            Err(e) => {
                // Tokens were already sent: the request cannot move to
                // another worker. Say what broke, then end the stream.
                let ge = gateway_error(slot.name(), e);
                tm::error(ge.error_type());
                tracing::warn!(error = %ge, "stream broken by its worker");
                out.send(sse(&error_body(&ge))).await?;
                return out.send(Bytes::from_static(DONE)).await;
            }
        }
    }
}

/// The streamed response; the work goes on in a task until the end or
/// until the client leaves.
pub(crate) fn stream_response(
    ctx: Placed,
    slot: Arc<WorkerSlot>,
    render: Renderer,
    first: WorkEvent,
    events: EventStream,
) -> Response<Body> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let task = async move {
        let out = Forward { tx };
        let r = forward(&ctx, &slot, render, first, events, &out).await;
        if let Err(Stop::ClientGone) = r {
            tm::cancelled(ctx.class.as_str());
            tracing::info!("client went away; request cancelled");
        }
        // `ctx` drops here: its admission hold is given back.
    };
    tokio::spawn(task.instrument(tracing::Span::current()));
    let body = stream_body(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
