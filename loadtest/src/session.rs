//! Closed loops: requests whose send time or content depends on earlier
//! answers, so they cannot be planned ahead.
//!
//! - A **closed conversation** sends its next turn the moment the previous
//!   turn's answer has fully arrived (plus `think_time_s`), with the text the
//!   server returned placed in the history: as an `assistant` message for
//!   chat, appended to the prompt string for completions. That is the
//!   traffic a chat product sends, and the only way the model's real answer
//!   reaches the next turn's prefix.
//! - **Back-to-back waves** send fan-out wave k+1 when wave k's last
//!   response has ended.
//!
//! Each request's intended time is the moment the loop was ready to send it,
//! and its latencies count from there, as for planned requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::client;
use crate::exchange::{Ctx, Meta};
use crate::plan::{Planned, PromptSpec};
use crate::prompt::{Message, Prompt};

/// A conversation's history, in the shape the endpoint takes.
enum History {
    Chat(Vec<Message>),
    Text(String),
}

impl History {
    fn new(chat: bool, system: String) -> Self {
        if chat {
            History::Chat(vec![Message {
                role: "system",
                content: system,
            }])
        } else {
            History::Text(system)
        }
    }

    fn user(&mut self, text: String) {
        match self {
            History::Chat(m) => m.push(Message {
                role: "user",
                content: text,
            }),
            History::Text(s) => {
                s.push_str("\n\n");
                s.push_str(&text);
            }
        }
    }

    /// The server's answer, exactly as received: for completions it
    /// continues the prompt it answered, so the next prompt starts with the
    /// previous one byte for byte.
    fn reply(&mut self, text: String) {
        match self {
            History::Chat(m) => m.push(Message {
                role: "assistant",
                content: text,
            }),
            History::Text(s) => s.push_str(&text),
        }
    }

    fn prompt(&self) -> Prompt {
        match self {
            History::Chat(m) => Prompt::Chat(m.clone()),
            History::Text(s) => Prompt::Text(s.clone()),
        }
    }
}

/// Runs the closed loop an item starts (`Closed` or `WaveSeries`), due at
/// `due`. Returns when its last request has ended.
pub(crate) async fn run(ctx: Arc<Ctx>, item: Planned, due: Instant) {
    match item.prompt {
        PromptSpec::Closed { conv } => conversation(&ctx, &item, conv, due).await,
        PromptSpec::WaveSeries => waves(ctx, &item, due).await,
        _ => {}
    }
}

async fn conversation(ctx: &Ctx, item: &Planned, conv: u64, mut due: Instant) {
    let c = &ctx.workload.conversation;
    let think = Duration::from_secs_f64(c.think_time_s);
    let mut history = History::new(ctx.chat, ctx.book.system_text(conv));
    for turn in 0..c.turns.max(1) {
        history.user(ctx.book.user_text(conv, turn));
        let max_tokens = if turn == 0 {
            item.max_tokens
        } else {
            ctx.book.max_tokens(conv, turn)
        };
        let body = client::body(&ctx.params, &history.prompt(), max_tokens);
        sleep_until(due).await;
        let Some(permit) = ctx.permit().await else {
            return;
        };
        let meta = Meta {
            tenant: item.tenant,
            kind: item.kind,
            step: item.step,
            wave: None,
            turn: Some(turn),
        };
        let ex = ctx.exchange(meta, due, body, true, permit).await;
        // Without an answer there is no next turn to send; the turns left
        // are reported as unfinished.
        if !ex.ok {
            return;
        }
        history.reply(ex.text.unwrap_or_default());
        due = ex.end + think;
    }
}

/// Key of the series' `max_tokens` draws (conversations use their number).
const SERIES_KEY: u64 = u64::MAX >> 24;

async fn waves(ctx: Arc<Ctx>, item: &Planned, mut due: Instant) {
    let Some(f) = ctx.workload.fanout.clone() else {
        return;
    };
    let until = ctx.start + Duration::from_secs_f64(ctx.workload.duration_s);
    let mut wave = 0u32;
    while (f.waves > 0 && wave < f.waves) || (f.waves == 0 && due < until) {
        let mut members = Vec::with_capacity(f.wave_size as usize);
        for member in 0..f.wave_size {
            let prompt = ctx
                .book
                .build(0, PromptSpec::Wave { wave, member }, ctx.chat);
            let index = wave.wrapping_mul(f.wave_size).wrapping_add(member);
            let max_tokens = ctx.book.max_tokens(SERIES_KEY, index);
            let body = client::body(&ctx.params, &prompt, max_tokens);
            let meta = Meta {
                tenant: item.tenant,
                kind: item.kind,
                step: item.step,
                wave: Some(wave),
                turn: None,
            };
            let ctx = Arc::clone(&ctx);
            members.push(tokio::spawn(async move {
                sleep_until(due).await;
                let permit = ctx.permit().await?;
                Some(ctx.exchange(meta, due, body, false, permit).await.end)
            }));
        }
        let mut last = due;
        for m in members {
            if let Ok(Some(end)) = m.await {
                last = last.max(end);
            }
        }
        due = last.max(Instant::now());
        wave += 1;
    }
}
