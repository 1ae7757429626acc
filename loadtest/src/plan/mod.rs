//! The schedule: every request's send offset, tenant and prompt, fixed
//! before the first byte is sent (open loop). Prompt *content* is not held
//! here, only what is needed to regenerate it (see `prompt.rs`), so a plan of
//! a million requests stays small.
//!
//! Closed loops (conversations in `closed` mode, `back_to_back` fan-out
//! waves) appear here as one item at the time they start; what follows
//! depends on the server's answers and is driven by `session.rs`.

use std::time::Duration;

mod waves;

use crate::rng::{Rng, cumulative};
use crate::workload::{
    ArrivalProcess, ConversationMode, Dist, DistKind, MAX_REQUESTS, Skew, Workload,
};

/// Stream ids for [`Rng::new`], one per purpose.
pub(crate) mod streams {
    pub const ARRIVAL: u64 = 1;
    pub const CHOICE: u64 = 2;
    pub const PROMPT: u64 = 3;
    pub const DOCUMENT: u64 = 4;
    pub const CONV_SYSTEM: u64 = 5;
    pub const CONV_TURN: u64 = 6;
    pub const WAVE: u64 = 7;
    pub const WAVE_DOCUMENT: u64 = 8;
    pub const WAVE_QUESTION: u64 = 9;
    pub const SESSION_OUTPUT: u64 = 10;
}

/// What kind of prompt a request carries (the workload's view; the server's
/// own `cached`/`fresh` class is reported separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A shared document plus a question.
    SharedPrefix,
    /// Nothing shared.
    Fresh,
    /// A turn of a conversation.
    Conversation,
    /// A member of a fan-out wave.
    Fanout,
}

impl Kind {
    /// Label in reports.
    pub fn label(self) -> &'static str {
        match self {
            Kind::SharedPrefix => "shared_prefix",
            Kind::Fresh => "fresh",
            Kind::Conversation => "conversation",
            Kind::Fanout => "fanout",
        }
    }
}

/// How to regenerate one request's prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum PromptSpec {
    /// Document `doc` followed by a question of `question_tokens`.
    Shared { doc: u32, question_tokens: u32 },
    /// `tokens` fresh tokens.
    Fresh { tokens: u32 },
    /// Turn `turn` (0-based) of conversation number `conv`.
    Turn { conv: u64, turn: u32 },
    /// Member `member` of fan-out wave `wave` (its own document).
    Wave { wave: u32, member: u32 },
    /// Starts closed conversation `conv`: every turn, back to back.
    Closed { conv: u64 },
    /// Starts the `back_to_back` fan-out waves.
    WaveSeries,
}

/// One scheduled request.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Offset of the intended send time from the run's start.
    pub at: Duration,
    /// Index into the workload's effective tenants.
    pub tenant: u16,
    /// Prompt kind.
    pub kind: Kind,
    /// Ramp step (0 for other processes).
    pub step: u16,
    /// `max_tokens` to ask for.
    pub max_tokens: u32,
    pub(crate) prompt: PromptSpec,
}

/// One step of a ramp (one entry for other processes).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Start offset in seconds.
    pub start_s: f64,
    /// End offset in seconds.
    pub end_s: f64,
    /// Rate the process aims at in this step.
    pub target_rps: f64,
}

/// The whole schedule.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Requests in send order.
    pub items: Vec<Planned>,
    /// Ramp steps (a single step otherwise).
    pub steps: Vec<Step>,
    /// Schedule length in seconds.
    pub duration_s: f64,
    /// Requests the plan will send, closed loops included (a `back_to_back`
    /// series without a `waves` count adds none: its length is not known).
    pub requests: usize,
}

/// Draws a length from a distribution (already validated).
pub(crate) fn sample(d: &Dist, rng: &mut Rng) -> u32 {
    let clamp = |x: f64| -> u32 {
        let v = x.round().clamp(f64::from(d.min), f64::from(d.max));
        v as u32
    };
    match d.dist {
        DistKind::Fixed => d.value,
        DistKind::Uniform => rng.range(u64::from(d.min), u64::from(d.max)) as u32,
        DistKind::Normal => clamp(d.mean + d.sd * rng.normal()),
        DistKind::Lognormal => {
            let sigma2 = (1.0 + (d.sd * d.sd) / (d.mean * d.mean)).ln();
            let mu = d.mean.ln() - sigma2 / 2.0;
            clamp((mu + sigma2.sqrt() * rng.normal()).exp())
        }
    }
}

/// Hard cap on the loop that draws arrivals, over the validated expectation
/// (a Poisson count can exceed its mean).
const LOOP_CAP: usize = (MAX_REQUESTS as usize) * 2;

fn poisson(rng: &mut Rng, rate: f64, from: f64, to: f64, out: &mut Vec<(f64, u16)>, step: u16) {
    if rate <= 0.0 {
        return;
    }
    let mut t = from;
    while out.len() < LOOP_CAP {
        t += rng.exp(rate);
        if t >= to {
            break;
        }
        out.push((t, step));
    }
}

fn arrivals(w: &Workload) -> (Vec<(f64, u16)>, Vec<Step>) {
    let a = &w.arrival;
    let d = w.duration_s;
    let mut rng = Rng::new(w.seed, streams::ARRIVAL, 0);
    let mut out = Vec::new();
    let one = |rate| {
        vec![Step {
            start_s: 0.0,
            end_s: d,
            target_rps: rate,
        }]
    };
    let steps = match a.process {
        ArrivalProcess::Poisson => {
            poisson(&mut rng, a.rate, 0.0, d, &mut out, 0);
            one(a.rate)
        }
        ArrivalProcess::Constant => {
            let n = ((d * a.rate).ceil() as usize).min(LOOP_CAP);
            out.extend(
                (0..n)
                    .map(|i| (i as f64 / a.rate, 0))
                    .filter(|(t, _)| *t < d),
            );
            one(a.rate)
        }
        ArrivalProcess::Bursts => {
            poisson(&mut rng, a.rate, 0.0, d, &mut out, 0);
            let mut k = 0u64;
            while out.len() < LOOP_CAP {
                let t = k as f64 * a.burst_every_s;
                if t >= d {
                    break;
                }
                out.extend(std::iter::repeat_n((t, 0), a.burst_size as usize));
                k += 1;
            }
            out.sort_by(|x, y| x.0.total_cmp(&y.0));
            one(out.len() as f64 / d)
        }
        ArrivalProcess::Ramp => {
            let n = a.steps.max(1);
            let len = d / f64::from(n);
            (0..n)
                .map(|s| {
                    let frac = if n == 1 {
                        1.0
                    } else {
                        f64::from(s) / f64::from(n - 1)
                    };
                    let rate = a.start_rate + (a.end_rate - a.start_rate) * frac;
                    let (from, to) = (f64::from(s) * len, f64::from(s + 1) * len);
                    poisson(&mut rng, rate, from, to, &mut out, s as u16);
                    Step {
                        start_s: from,
                        end_s: to,
                        target_rps: rate,
                    }
                })
                .collect()
        }
    };
    (out, steps)
}

/// Open conversations: each slot holds (conversation number, next turn).
struct Conversations {
    slots: Vec<(u64, u32)>,
    next_conv: u64,
    turns: u32,
}

impl Conversations {
    fn next(&mut self, rng: &mut Rng) -> PromptSpec {
        let i = rng.range(0, self.slots.len() as u64 - 1) as usize;
        let (conv, turn) = self.slots[i];
        if turn + 1 >= self.turns {
            self.slots[i] = (self.next_conv, 0);
            self.next_conv += 1;
        } else {
            self.slots[i].1 = turn + 1;
        }
        PromptSpec::Turn { conv, turn }
    }
}

impl Plan {
    /// Builds the schedule of a validated workload. Same workload, same plan.
    pub fn build(w: &Workload) -> Plan {
        let (mut times, steps) = arrivals(w);
        if w.mix.shared_prefix + w.mix.fresh + w.mix.conversation <= 0.0 {
            times.clear(); // only fan-out waves
        }
        let tenants = w.effective_tenants();
        let tenant_cum = cumulative(tenants.iter().map(|t| t.share));
        let kind_cum = cumulative([w.mix.shared_prefix, w.mix.fresh, w.mix.conversation]);
        let docs = w.shared_prefix.documents.max(1);
        let doc_cum = match w.shared_prefix.skew {
            Skew::Uniform => cumulative((0..docs).map(|_| 1.0)),
            Skew::Zipf => {
                cumulative((1..=docs).map(|k| 1.0 / f64::from(k).powf(w.shared_prefix.zipf_s)))
            }
        };
        let conv_slots = w.conversation.conversations.max(1);
        let mut convs = Conversations {
            slots: (0..u64::from(conv_slots)).map(|c| (c, 0)).collect(),
            next_conv: u64::from(conv_slots),
            turns: w.conversation.turns.max(1),
        };
        let closed = w.conversation.mode == ConversationMode::Closed;
        let mut next_closed = 0u64;
        let mut rng = Rng::new(w.seed, streams::CHOICE, 0);
        let mut items: Vec<Planned> = times
            .into_iter()
            .map(|(t, step)| {
                let tenant = rng.weighted(&tenant_cum) as u16;
                let (kind, prompt) = match rng.weighted(&kind_cum) {
                    0 => (
                        Kind::SharedPrefix,
                        PromptSpec::Shared {
                            doc: rng.weighted(&doc_cum) as u32,
                            question_tokens: sample(&w.shared_prefix.question_tokens, &mut rng),
                        },
                    ),
                    1 => (
                        Kind::Fresh,
                        PromptSpec::Fresh {
                            tokens: sample(&w.fresh.prompt_tokens, &mut rng),
                        },
                    ),
                    _ if closed => {
                        next_closed += 1;
                        (
                            Kind::Conversation,
                            PromptSpec::Closed {
                                conv: next_closed - 1,
                            },
                        )
                    }
                    _ => (Kind::Conversation, convs.next(&mut rng)),
                };
                Planned {
                    at: Duration::from_secs_f64(t),
                    tenant,
                    kind,
                    step,
                    max_tokens: sample(&w.output.max_tokens, &mut rng),
                    prompt,
                }
            })
            .collect();
        let mut requests = items.len();
        if closed {
            requests += next_closed as usize * (w.conversation.turns.max(1) as usize - 1);
        }
        requests += waves::add(w, &tenant_cum, &steps, &mut items);
        Plan {
            items,
            steps,
            duration_s: w.duration_s,
            requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Tenant;

    fn workload() -> Workload {
        let mut w = Workload {
            duration_s: 100.0,
            ..Workload::default()
        };
        w.arrival.rate = 50.0;
        w
    }

    #[test]
    fn same_seed_same_plan_other_seed_other_plan() {
        let w = workload();
        assert_eq!(Plan::build(&w).items, Plan::build(&w).items);
        let mut other = workload();
        other.seed = 1;
        assert_ne!(Plan::build(&w).items, Plan::build(&other).items);
    }

    #[test]
    fn poisson_count_and_order() {
        let p = Plan::build(&workload());
        let n = p.items.len() as f64;
        assert!((n - 5000.0).abs() < 300.0, "n = {n}");
        assert!(p.items.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(p.items.iter().all(|i| i.at < Duration::from_secs(100)));
    }

    #[test]
    fn constant_is_evenly_spaced() {
        let mut w = workload();
        w.arrival.process = ArrivalProcess::Constant;
        w.arrival.rate = 4.0;
        w.duration_s = 1.0;
        let at: Vec<f64> = Plan::build(&w)
            .items
            .iter()
            .map(|i| i.at.as_secs_f64())
            .collect();
        assert_eq!(at, vec![0.0, 0.25, 0.5, 0.75]);
    }

    #[test]
    fn bursts_land_together() {
        let mut w = workload();
        w.arrival.process = ArrivalProcess::Bursts;
        w.arrival.rate = 0.0;
        w.arrival.burst_size = 5;
        w.arrival.burst_every_s = 10.0;
        w.duration_s = 30.0;
        let p = Plan::build(&w);
        assert_eq!(p.items.len(), 15);
        assert_eq!(p.items.iter().filter(|i| i.at.as_secs() == 10).count(), 5);
    }

    #[test]
    fn ramp_rises_step_by_step() {
        let mut w = workload();
        w.arrival.process = ArrivalProcess::Ramp;
        w.arrival.start_rate = 10.0;
        w.arrival.end_rate = 100.0;
        w.arrival.steps = 4;
        let p = Plan::build(&w);
        assert_eq!(p.steps.len(), 4);
        assert_eq!(p.steps[3].target_rps, 100.0);
        let per_step: Vec<usize> = (0..4)
            .map(|s| p.items.iter().filter(|i| i.step == s).count())
            .collect();
        assert!(per_step.windows(2).all(|w| w[0] < w[1]), "{per_step:?}");
    }

    #[test]
    fn shares_and_zipf_skew() {
        let mut w = workload();
        w.tenants = vec![
            Tenant {
                name: "a".into(),
                share: 3.0,
                ..Tenant::default()
            },
            Tenant {
                name: "b".into(),
                share: 1.0,
                ..Tenant::default()
            },
        ];
        w.mix.shared_prefix = 1.0;
        w.mix.fresh = 0.0;
        let p = Plan::build(&w);
        let a = p.items.iter().filter(|i| i.tenant == 0).count() as f64;
        let b = p.items.iter().filter(|i| i.tenant == 1).count() as f64;
        assert!((a / b - 3.0).abs() < 0.4, "a/b = {}", a / b);
        let doc = |d| {
            p.items
                .iter()
                .filter(|i| matches!(i.prompt, PromptSpec::Shared { doc, .. } if doc == d))
                .count()
        };
        assert!(doc(0) > 2 * doc(7), "zipf: doc0 {} doc7 {}", doc(0), doc(7));
    }

    #[test]
    fn conversations_advance_turn_by_turn() {
        let mut w = workload();
        w.mix = crate::workload::Mix {
            shared_prefix: 0.0,
            fresh: 0.0,
            conversation: 1.0,
        };
        w.conversation.conversations = 2;
        w.conversation.turns = 3;
        let p = Plan::build(&w);
        let mut seen = std::collections::HashMap::<u64, Vec<u32>>::new();
        for i in &p.items {
            let PromptSpec::Turn { conv, turn } = i.prompt else {
                panic!()
            };
            seen.entry(conv).or_default().push(turn);
        }
        for turns in seen.values() {
            assert!(
                turns.iter().enumerate().all(|(k, &t)| t == k as u32),
                "{turns:?}"
            );
            assert!(turns.len() <= 3);
        }
    }

    #[test]
    fn lengths_stay_in_bounds() {
        let mut rng = Rng::new(0, 0, 0);
        let d = Dist {
            dist: DistKind::Lognormal,
            mean: 100.0,
            sd: 200.0,
            min: 10,
            max: 300,
            ..Dist::default()
        };
        for _ in 0..1000 {
            assert!((10..=300).contains(&sample(&d, &mut rng)));
        }
    }
}
