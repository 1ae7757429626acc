//! Admission end to end on a simulated clock: a [`Placer`], a [`FairQueue`],
//! per-tenant [`TenantLimiter`]s, SLO shedding and the in-flight [`Ledger`],
//! driven the way the gateway drives them, over two simulated workers.
//!
//! Two tenants of equal weight: a flooder sending at 10× the fleet's
//! capacity and a light tenant. The light tenant must be served within a
//! couple of service times; the flooder must be refused at arrival (rate
//! limit, SLO shedding), not after waiting, and the queue must stay
//! bounded while the workers stay busy.

// Tests may unwrap (STYLE.md); the simulation lives in helper functions,
// which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cake_policy::{
    Decision, FairQueue, Ledger, PlacementPolicy, Placer, RateDefaults, Refusal, RequestShape,
    ShedInput, TenantLimiter, TenantLimits, TenantPolicy, WorkerLoad, WorkerView, decide, predict,
    prefill_rate, queue_wait, retry_after_secs,
};

const TICK: Duration = Duration::from_millis(1);
const REPORT_EVERY: u64 = 50; // ticks

/// The workers' true rates (they also report them).
fn rates() -> WorkerLoad {
    WorkerLoad {
        queued_compute_tokens: 0,
        queued_io_bytes: 0,
        compute_a: 0.02,
        compute_b: 0.0006,
        bandwidth: 1.25e9,
        chunk_tokens: 256,
        kv_bytes_per_token: 128 * 1024,
    }
}

#[derive(Debug, Clone, Copy)]
struct Req {
    id: u64,
    tenant: usize,
    tokens: u64,
    arrived: Instant,
}

/// A worker serving one request at a time; the gateway holds the queue.
#[derive(Default)]
struct SimWorker {
    /// (request, started, service time).
    running: Option<(Req, Instant, Duration)>,
}

impl SimWorker {
    fn remaining_tokens(&self, now: Instant) -> u64 {
        self.running.map_or(0, |(r, start, svc)| {
            let done = now.saturating_duration_since(start).as_secs_f64() / svc.as_secs_f64();
            (r.tokens as f64 * (1.0 - done.min(1.0))).ceil() as u64
        })
    }
}

#[derive(Default, Debug)]
struct Stats {
    arrived: u64,
    limited: u64,
    shed: u64,
    queue_full: u64,
    expired: u64,
    served: u64,
    met_slo: u64,
    max_queue_delay: Duration,
    max_ttft: Duration,
    min_retry_after_secs: Option<u64>,
}

impl Stats {
    fn refused_at_arrival(&self) -> u64 {
        self.limited + self.shed + self.queue_full
    }

    fn note_retry(&mut self, d: Duration) {
        let s = retry_after_secs(d);
        self.min_retry_after_secs = Some(self.min_retry_after_secs.map_or(s, |m| m.min(s)));
    }
}

struct Outcome {
    stats: [Stats; 2],
    max_queue_len: usize,
    service: Duration,
    busy_fraction: f64,
}

/// Runs `secs` seconds: tenant 0 (the flooder) sends `flood_rps`, tenant 1
/// (light) sends `light_rps`, both 1024-token fresh prompts.
fn simulate(flood_rps: f64, light_rps: f64, secs: u64) -> Outcome {
    let t0 = Instant::now();
    let mut flooder = TenantPolicy::new("flooder");
    flooder.limits = TenantLimits {
        requests_per_s: Some(100.0),
        max_concurrent: Some(64),
        ..TenantLimits::default()
    };
    flooder.ttft_slo = Some(Duration::from_millis(400));
    flooder.queue_deadline = Some(Duration::from_millis(300));
    let mut light = TenantPolicy::new("light");
    light.ttft_slo = Some(Duration::from_millis(400));
    light.queue_deadline = Some(Duration::from_millis(300));
    let tenants = [flooder, light];
    for t in &tenants {
        t.validate().unwrap();
    }
    let mut limiters: Vec<_> = tenants
        .iter()
        .map(|t| TenantLimiter::new(t.limits))
        .collect();

    let defaults = RateDefaults::default();
    let mut placer = Placer::new(PlacementPolicy::Adaptive, 1024);
    let mut queue: FairQueue<Req, usize> = FairQueue::new(1024, 32, 64);
    let mut ledger = Ledger::new(Duration::from_secs(30));
    let mut workers: Vec<SimWorker> = (0..2).map(|_| SimWorker::default()).collect();
    let mut reported = vec![rates(); workers.len()];

    let tokens = 1024;
    let shape = RequestShape {
        prompt_tokens: tokens,
        cached_tokens: 0,
        kv_bytes_per_token: 0,
    };
    // The true service time of one request: what the worker takes.
    let service = predict(&rates(), &shape, &defaults).idle_ttft;

    let measured_rate = (workers.len() as u64 * tokens) as f64 / service.as_secs_f64();
    let mut stats = [Stats::default(), Stats::default()];
    let mut next_arrival = [0.0f64, 0.0123];
    let gaps = [1.0 / flood_rps, 1.0 / light_rps];
    let mut next_id = 0u64;
    let mut max_queue_len = 0;
    let mut busy_ticks = 0u64;
    let ticks = secs * 1000;

    for tick in 0..ticks {
        let now = t0 + TICK * tick as u32;
        let now_s = tick as f64 / 1000.0;

        // Workers finish what is done.
        for worker in workers.iter_mut() {
            if let Some((r, start, svc)) = worker.running
                && start + svc <= now
            {
                worker.running = None;
                ledger.complete(r.id);
                limiters[r.tenant].release();
                let s = &mut stats[r.tenant];
                let ttft = now - r.arrived;
                s.served += 1;
                s.max_ttft = s.max_ttft.max(ttft);
                if tenants[r.tenant].ttft_slo.is_none_or(|slo| ttft <= slo) {
                    s.met_slo += 1;
                }
            }
        }

        // Load reports.
        if tick % REPORT_EVERY == 0 {
            for (w, worker) in workers.iter().enumerate() {
                reported[w].queued_compute_tokens = worker.remaining_tokens(now);
                ledger.on_report(w, now);
            }
            ledger.prune(now);
        }

        let views = |workers: &[SimWorker], ledger: &Ledger, only_idle: bool| -> Vec<WorkerView> {
            workers
                .iter()
                .enumerate()
                .map(|(w, worker)| WorkerView {
                    index: w,
                    healthy: !only_idle || worker.running.is_none(),
                    load: ledger.effective_load(w, &reported[w]),
                    cached_tokens: None,
                    local_tokens: 0,
                })
                .collect()
        };

        // Arrivals: limits, then shedding, then the queue.
        for t in 0..2 {
            while next_arrival[t] <= now_s {
                next_arrival[t] += gaps[t];
                let req = Req {
                    id: next_id,
                    tenant: t,
                    tokens,
                    arrived: now,
                };
                next_id += 1;
                stats[t].arrived += 1;
                if let Err(refusal) = limiters[t].check(now, tokens) {
                    assert!(matches!(refusal, Refusal::Limited(_)), "{refusal}");
                    stats[t].limited += 1;
                    if let Some(d) = refusal.retry_after() {
                        stats[t].note_retry(d);
                    }
                    continue;
                }
                let all = views(&workers, &ledger, false);
                let placed = placer.place(&all, &shape, None).unwrap();
                let share = tenants[t].share();
                let ahead = queue.work_ahead(&t, share, tokens) - tokens;
                // The gateway measures the fleet's service rate; before it
                // has, the reported rates give an estimate.
                let rate = if tick < 1000 {
                    prefill_rate(all.iter().map(|v| &v.load), &defaults)
                } else {
                    measured_rate
                };
                let decision = decide(&ShedInput {
                    predicted_ttft: placed.prediction.ttft,
                    idle_ttft: placed.prediction.idle_ttft,
                    queue_wait: queue_wait(ahead, rate),
                    slo: tenants[t].ttft_slo,
                    queue_deadline: tenants[t].queue_deadline,
                });
                if let Decision::Shed { retry_after } = decision {
                    limiters[t].release();
                    stats[t].shed += 1;
                    stats[t].note_retry(retry_after);
                    continue;
                }
                let deadline = tenants[t].queue_deadline.map(|d| now + d);
                if queue.push(t, share, tokens, req, deadline).is_err() {
                    limiters[t].release();
                    stats[t].queue_full += 1;
                }
            }
        }
        max_queue_len = max_queue_len.max(queue.len());

        // Expired requests are refused; then idle workers take the next.
        for (t, _) in queue.remove_expired(now) {
            limiters[t].release();
            stats[t].expired += 1;
        }
        loop {
            let idle = views(&workers, &ledger, true);
            if idle.iter().all(|v| !v.healthy) {
                break;
            }
            let Some((t, req)) = queue.pop(now) else {
                break;
            };
            let placed = placer.place(&idle, &shape, None).unwrap();
            ledger.dispatch(req.id, placed.worker, placed.prediction.work(), now);
            workers[placed.worker].running = Some((req, now, service));
            let s = &mut stats[t];
            s.max_queue_delay = s.max_queue_delay.max(now - req.arrived);
        }
        for (t, _) in queue.remove_expired(now) {
            limiters[t].release();
            stats[t].expired += 1;
        }
        busy_ticks += workers.iter().filter(|w| w.running.is_some()).count() as u64;
    }

    Outcome {
        stats,
        max_queue_len,
        service,
        busy_fraction: busy_ticks as f64 / (ticks * workers.len() as u64) as f64,
    }
}

#[test]
fn light_tenant_is_served_promptly_while_flooder_is_refused_fast() {
    // Fleet capacity: 2 workers / ~84 ms ≈ 24 requests/s; the flooder
    // sends 240/s, the light tenant 2/s.
    let o = simulate(240.0, 2.0, 30);
    let [flood, light] = &o.stats;
    eprintln!(
        "service {:?}; max queue {}; busy {:.3}",
        o.service, o.max_queue_len, o.busy_fraction
    );
    eprintln!("flooder {flood:?}");
    eprintln!("light   {light:?}");

    // The light tenant: every request served, within its SLO, after a
    // queueing delay of at most a couple of service times.
    assert_eq!(light.served, light.arrived, "{light:?}");
    assert_eq!(light.met_slo, light.served, "{light:?}");
    assert!(light.max_queue_delay <= o.service * 2, "{light:?}");
    assert!(light.max_ttft <= o.service * 3, "{light:?}");

    // The flooder: most requests refused, at arrival (rate limit and SLO
    // shedding); few after waiting in the queue (those admitted near the
    // deadline that the light tenant's later arrivals pushed past it, which
    // admission cannot foresee), and none later than the queue deadline.
    assert!(flood.limited > flood.arrived / 3, "{flood:?}");
    assert!(flood.shed > 0, "{flood:?}");
    assert!(flood.refused_at_arrival() > flood.arrived / 2, "{flood:?}");
    assert!(
        flood.expired * 20 <= flood.refused_at_arrival(),
        "{flood:?}"
    );
    assert!(
        flood.max_queue_delay <= Duration::from_millis(300),
        "{flood:?}"
    );
    assert!(flood.min_retry_after_secs >= Some(1), "{flood:?}");
    // What it does get served mostly meets its SLO.
    assert!(flood.met_slo * 100 >= flood.served * 95, "{flood:?}");

    // The queue stays short, well inside its bounds, and the workers stay
    // busy: shedding does not waste capacity.
    assert!(o.max_queue_len <= 16, "max queue {}", o.max_queue_len);
    assert!(o.busy_fraction > 0.9, "busy {}", o.busy_fraction);
}

#[test]
fn light_tenant_alone_waits_for_nothing() {
    let o = simulate(1e-6, 2.0, 10);
    let light = &o.stats[1];
    assert_eq!(light.served, light.arrived);
    assert!(light.max_queue_delay <= TICK, "{light:?}");
    assert!(light.max_ttft <= o.service + TICK, "{light:?}");
}

/// The queue alone, under the flood with no limits and no SLO: only the
/// bounds keep it finite, and they hold.
#[test]
fn queue_bounds_hold_without_shedding() {
    let t0 = Instant::now();
    let mut q: FairQueue<u64, &str> = FairQueue::new(1024, 32, 48);
    let share = TenantPolicy::new("x").share();
    let mut full = 0;
    for i in 0..10_000u64 {
        let now = t0 + TICK * i as u32;
        let tenant = if i % 10 == 0 { "light" } else { "flooder" };
        match q.push(tenant, share, 1024, i, None) {
            Ok(()) => {}
            Err(_) => full += 1,
        }
        if i % 10 == 0 {
            q.pop(now);
        }
        assert!(q.len() <= 48);
        assert!(q.tenant_len(&"flooder") <= 32);
    }
    assert!(full > 8000, "{full}");
}
