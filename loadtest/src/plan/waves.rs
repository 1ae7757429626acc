//! Fan-out waves in the plan: `interval` waves are planned requests like any
//! other (all members of a wave at one instant); `back_to_back` waves are
//! one item that starts the loop in `session.rs`.

use std::time::Duration;

use super::{Kind, Planned, PromptSpec, Step, sample, streams};
use crate::rng::Rng;
use crate::workload::{WavePacing, Workload};

/// Adds the fan-out waves to `items` (kept in send order); returns how
/// many requests they will send. All members of a wave share a tenant.
pub(super) fn add(
    w: &Workload,
    tenant_cum: &[f64],
    steps: &[Step],
    items: &mut Vec<Planned>,
) -> usize {
    let Some(f) = &w.fanout else { return 0 };
    let mut rng = Rng::new(w.seed, streams::WAVE, 0);
    let size = f.wave_size as usize;
    match f.pacing {
        WavePacing::BackToBack => {
            items.insert(
                0,
                Planned {
                    at: Duration::ZERO,
                    tenant: rng.weighted(tenant_cum) as u16,
                    kind: Kind::Fanout,
                    step: 0,
                    max_tokens: sample(&w.output.max_tokens, &mut rng),
                    prompt: PromptSpec::WaveSeries,
                },
            );
            f.waves as usize * size
        }
        WavePacing::Interval => {
            let n = f.interval_waves(w.duration_s);
            for wave in 0..n {
                let t = wave as f64 * f.interval_s;
                let step = steps
                    .iter()
                    .position(|s| t >= s.start_s && t < s.end_s)
                    .unwrap_or(0) as u16;
                let tenant = rng.weighted(tenant_cum) as u16;
                items.extend((0..f.wave_size).map(|member| Planned {
                    at: Duration::from_secs_f64(t),
                    tenant,
                    kind: Kind::Fanout,
                    step,
                    max_tokens: sample(&w.output.max_tokens, &mut rng),
                    prompt: PromptSpec::Wave {
                        wave: wave as u32,
                        member,
                    },
                }));
            }
            // Stable: open-loop items keep their order among equal times.
            items.sort_by_key(|i| i.at);
            n as usize * size
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Plan;
    use super::*;
    use crate::workload::{ArrivalProcess, ConversationMode};

    fn workload() -> Workload {
        let mut w = Workload {
            duration_s: 100.0,
            ..Workload::default()
        };
        w.arrival.rate = 50.0;
        w
    }

    #[test]
    fn interval_waves_share_a_time_and_a_tenant_each() {
        let mut w = workload();
        w.duration_s = 25.0;
        w.arrival.rate = 1.0;
        w.fanout = Some(crate::workload::Fanout {
            wave_size: 4,
            interval_s: 10.0,
            ..Default::default()
        });
        let p = Plan::build(&w);
        let waves: Vec<&Planned> = p.items.iter().filter(|i| i.kind == Kind::Fanout).collect();
        assert_eq!(waves.len(), 12);
        assert_eq!(p.requests, p.items.len());
        for k in 0..3u32 {
            let members: Vec<_> = waves
                .iter()
                .filter(|i| matches!(i.prompt, PromptSpec::Wave { wave, .. } if wave == k))
                .collect();
            assert_eq!(members.len(), 4);
            assert!(
                members
                    .iter()
                    .all(|i| i.at == Duration::from_secs(u64::from(k) * 10))
            );
            assert!(members.iter().all(|i| i.tenant == members[0].tenant));
        }
        assert!(p.items.windows(2).all(|w| w[0].at <= w[1].at));
        // The open-loop part is the same plan as without waves.
        let mut plain = w.clone();
        plain.fanout = None;
        let open: Vec<_> = p
            .items
            .iter()
            .filter(|i| i.kind != Kind::Fanout)
            .cloned()
            .collect();
        assert_eq!(open, Plan::build(&plain).items);
    }

    #[test]
    fn closed_loops_are_one_item_each() {
        let mut w = workload();
        w.duration_s = 10.0;
        w.arrival.process = ArrivalProcess::Constant;
        w.arrival.rate = 1.0;
        w.mix = crate::workload::Mix {
            shared_prefix: 0.0,
            fresh: 0.0,
            conversation: 1.0,
        };
        w.conversation.mode = ConversationMode::Closed;
        w.conversation.turns = 3;
        let p = Plan::build(&w);
        let convs: Vec<u64> = p
            .items
            .iter()
            .map(|i| match i.prompt {
                PromptSpec::Closed { conv } => conv,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(convs, (0..10).collect::<Vec<_>>());
        assert_eq!(p.requests, 30);

        w.mix.conversation = 0.0;
        w.fanout = Some(crate::workload::Fanout {
            pacing: WavePacing::BackToBack,
            waves: 5,
            ..Default::default()
        });
        let p = Plan::build(&w);
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].prompt, PromptSpec::WaveSeries);
        assert_eq!(p.requests, 40);
    }
}
