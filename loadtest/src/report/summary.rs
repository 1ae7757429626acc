//! From records to numbers: percentiles (hdrhistogram), rates, goodput,
//! prefix reuse, splits by tenant, class, kind, conversation turn and ramp
//! step, fan-out waves. This is what the JSON file holds, field for field.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::reuse::{ReuseAcc, ReuseStats, WaveStats, waves};
use crate::client::Outcome;
use crate::runner::{Record, RunResult};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Largest.
    pub max: f64,
    /// Samples.
    pub count: u64,
}

/// Microsecond histogram, one hour at most (longer values saturate).
pub(super) struct Hist(Option<Histogram<u64>>);

impl Hist {
    pub(super) fn new() -> Self {
        Hist(Histogram::new_with_bounds(1, 3_600_000_000, 3).ok())
    }

    pub(super) fn record(&mut self, d: Duration) {
        if let Some(h) = &mut self.0 {
            h.saturating_record(d.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
        }
    }

    pub(super) fn percentiles(&self) -> Percentiles {
        let Some(h) = &self.0 else {
            return Percentiles::default();
        };
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            mean: h.mean() / 1000.0,
            max: ms(h.max()),
            count: h.len(),
        }
    }

    /// (ms, fraction ≤ ms) points for a CDF plot.
    fn cdf(&self, points: u32) -> Vec<(f64, f64)> {
        let Some(h) = &self.0 else { return Vec::new() };
        if h.is_empty() {
            return Vec::new();
        }
        (0..=points)
            .map(|i| {
                let q = f64::from(i) / f64::from(points);
                (h.value_at_quantile(q) as f64 / 1000.0, q)
            })
            .collect()
    }
}

/// How late requests left, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Lag {
    /// Median lateness.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Latest.
    pub max: f64,
}

/// The numbers for one group of requests (a run, a tenant, a class).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GroupStats {
    /// Requests finished (successes and errors).
    pub requests: u64,
    /// Streamed to the end.
    pub ok: u64,
    /// Everything else.
    pub errors: u64,
    /// Errors by HTTP status or by `timeout`/`connect`/`transport`/`stream`.
    pub errors_by_status: BTreeMap<String, u64>,
    /// Successes that met their tenant's TTFT SLO.
    pub good: u64,
    /// Successes per second.
    pub throughput_rps: f64,
    /// Successes within SLO per second.
    pub goodput_rps: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Prompt tokens per second (as the server reported them).
    pub prompt_tokens_per_s: f64,
    /// Time to first token of successes.
    pub ttft_ms: Percentiles,
    /// Time per output token after the first.
    pub tpot_ms: Percentiles,
    /// End-to-end latency of successes.
    pub e2e_ms: Percentiles,
    /// Prefix reuse the server reported for the successes.
    pub reuse: ReuseStats,
}

/// One ramp step's numbers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RampStep {
    /// Rate the process aimed at.
    pub target_rps: f64,
    /// Requests actually scheduled per second in the step.
    pub offered_rps: f64,
    /// Successes per second.
    pub throughput_rps: f64,
    /// Successes within SLO per second.
    pub goodput_rps: f64,
    /// Errors in the step.
    pub errors: u64,
    /// TTFT of the step's successes.
    pub ttft_ms: Percentiles,
}

/// Where a ramp stopped keeping up.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Saturation {
    /// Highest goodput of any step.
    pub peak_goodput_rps: f64,
    /// Offered rate of that step.
    pub at_offered_rps: f64,
    /// Offered rate of the first step whose goodput fell below 90% of what
    /// was offered (`None`: the server kept up to the end).
    pub knee_offered_rps: Option<f64>,
}

/// One run's report.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run name.
    pub name: String,
    /// Target URL.
    pub target: String,
    /// Model asked for.
    pub model: String,
    /// Workload name.
    pub workload: String,
    /// Requests planned.
    pub planned: u64,
    /// Planned requests per second of schedule.
    pub offered_rps: f64,
    /// Denominator of every rate: the schedule, or longer when the last
    /// request ended after it.
    pub duration_s: f64,
    /// Totals over the run.
    #[serde(flatten)]
    pub overall: GroupStats,
    /// How late requests left.
    pub send_lag_ms: Lag,
    /// By tenant name.
    pub per_tenant: BTreeMap<String, GroupStats>,
    /// By the server's `usage.cake.class` (`unreported` when absent).
    pub per_class: BTreeMap<String, GroupStats>,
    /// By prompt kind of the workload.
    pub per_kind: BTreeMap<String, GroupStats>,
    /// Conversation turns: `"1"` (first turns) and `"2+"` (the turns that
    /// resend a history); empty without conversations.
    pub per_turn: BTreeMap<String, GroupStats>,
    /// Fan-out waves (`None` without `[fanout]`).
    pub waves: Option<WaveStats>,
    /// Ramp steps (empty unless the arrival process is a ramp).
    pub ramp: Vec<RampStep>,
    /// Ramp result.
    pub saturation: Option<Saturation>,
    /// TTFT CDF points (ms, fraction), for plots.
    #[serde(skip)]
    pub ttft_cdf: Vec<(f64, f64)>,
}

struct Acc {
    stats: GroupStats,
    ttft: Hist,
    tpot: Hist,
    e2e: Hist,
    reuse: ReuseAcc,
    prompt_tokens: u64,
    output_tokens: u64,
}

impl Acc {
    fn new() -> Self {
        Acc {
            stats: GroupStats::default(),
            ttft: Hist::new(),
            tpot: Hist::new(),
            e2e: Hist::new(),
            reuse: ReuseAcc::default(),
            prompt_tokens: 0,
            output_tokens: 0,
        }
    }

    fn add(&mut self, r: &Record, good: bool) {
        let s = &mut self.stats;
        s.requests += 1;
        if r.outcome != Outcome::Ok {
            s.errors += 1;
            *s.errors_by_status.entry(r.outcome.label()).or_default() += 1;
            return;
        }
        s.ok += 1;
        s.good += u64::from(good);
        self.reuse.add(r);
        self.prompt_tokens += u64::from(r.prompt_tokens);
        self.output_tokens += u64::from(r.completion_tokens);
        self.e2e.record(r.e2e);
        if let Some(t) = r.ttft {
            self.ttft.record(t);
            if r.completion_tokens > 1 {
                let rest = r.e2e.saturating_sub(t);
                self.tpot.record(rest / (r.completion_tokens - 1));
            }
        }
    }

    fn finish(mut self, secs: f64) -> GroupStats {
        let s = &mut self.stats;
        s.throughput_rps = s.ok as f64 / secs;
        s.goodput_rps = s.good as f64 / secs;
        s.output_tokens_per_s = self.output_tokens as f64 / secs;
        s.prompt_tokens_per_s = self.prompt_tokens as f64 / secs;
        s.ttft_ms = self.ttft.percentiles();
        s.tpot_ms = self.tpot.percentiles();
        s.e2e_ms = self.e2e.percentiles();
        s.reuse = self.reuse.finish();
        self.stats
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whether a finished request counts toward goodput.
fn is_good(run: &RunResult, r: &Record) -> bool {
    if r.outcome != Outcome::Ok {
        return false;
    }
    let slo = run
        .tenants
        .get(usize::from(r.tenant))
        .and_then(|t| t.ttft_slo_ms);
    match (slo, r.ttft) {
        (None, _) => true,
        (Some(slo), Some(t)) => ms(t) <= slo,
        (Some(_), None) => false,
    }
}

fn ramp(run: &RunResult) -> (Vec<RampStep>, Option<Saturation>) {
    if run.steps.len() < 2 {
        return (Vec::new(), None);
    }
    let steps: Vec<RampStep> = run
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let len = (step.end_s - step.start_s).max(1e-9);
            let mut acc = Acc::new();
            for r in run.records.iter().filter(|r| usize::from(r.step) == i) {
                acc.add(r, is_good(run, r));
            }
            let g = acc.finish(len);
            RampStep {
                target_rps: step.target_rps,
                offered_rps: g.requests as f64 / len,
                throughput_rps: g.throughput_rps,
                goodput_rps: g.goodput_rps,
                errors: g.errors,
                ttft_ms: g.ttft_ms,
            }
        })
        .collect();
    let peak = steps
        .iter()
        .max_by(|a, b| a.goodput_rps.total_cmp(&b.goodput_rps))
        .map(|s| (s.goodput_rps, s.offered_rps));
    let knee = steps
        .iter()
        .find(|s| s.goodput_rps < 0.9 * s.offered_rps)
        .map(|s| s.offered_rps);
    let sat = peak.map(|(g, at)| Saturation {
        peak_goodput_rps: g,
        at_offered_rps: at,
        knee_offered_rps: knee,
    });
    (steps, sat)
}

/// Summarizes a run.
pub fn summarize(run: &RunResult) -> RunSummary {
    let secs = run.schedule_s.max(run.elapsed.as_secs_f64()).max(1e-9);
    let mut overall = Acc::new();
    let mut tenants: BTreeMap<String, Acc> = BTreeMap::new();
    let mut classes: BTreeMap<String, Acc> = BTreeMap::new();
    let mut kinds: BTreeMap<String, Acc> = BTreeMap::new();
    let mut turns: BTreeMap<String, Acc> = BTreeMap::new();
    let mut lag = Hist::new();
    for r in &run.records {
        let good = is_good(run, r);
        overall.add(r, good);
        let tenant = run
            .tenants
            .get(usize::from(r.tenant))
            .map_or("?", |t| t.name.as_str());
        tenants
            .entry(tenant.to_string())
            .or_insert_with(Acc::new)
            .add(r, good);
        let class = r.class.as_deref().unwrap_or("unreported");
        classes
            .entry(class.to_string())
            .or_insert_with(Acc::new)
            .add(r, good);
        kinds
            .entry(r.kind.label().to_string())
            .or_insert_with(Acc::new)
            .add(r, good);
        if let Some(t) = r.turn {
            let key = if t == 0 { "1" } else { "2+" };
            turns
                .entry(key.to_string())
                .or_insert_with(Acc::new)
                .add(r, good);
        }
        lag.record(r.lag);
    }
    let ttft_cdf = overall.ttft.cdf(200);
    let lag = lag.percentiles();
    let (ramp, saturation) = ramp(run);
    let finish = |m: BTreeMap<String, Acc>| -> BTreeMap<String, GroupStats> {
        m.into_iter().map(|(k, a)| (k, a.finish(secs))).collect()
    };
    let mut overall = overall.finish(secs);
    // Planned requests that never produced a record (cannot happen while
    // each request has its own deadline) would be errors, not silence.
    let missing = (run.planned as u64).saturating_sub(overall.requests);
    if missing > 0 {
        overall.requests += missing;
        overall.errors += missing;
        *overall
            .errors_by_status
            .entry("unfinished".into())
            .or_default() += missing;
    }
    RunSummary {
        name: run.name.clone(),
        target: run.target.clone(),
        model: run.model.clone(),
        workload: run.workload.clone(),
        planned: run.planned as u64,
        offered_rps: run.planned as f64 / run.schedule_s.max(1e-9),
        duration_s: secs,
        overall,
        send_lag_ms: Lag {
            p50: lag.p50,
            p99: lag.p99,
            max: lag.max,
        },
        per_tenant: finish(tenants),
        per_class: finish(classes),
        per_kind: finish(kinds),
        per_turn: finish(turns),
        waves: waves(&run.records),
        ramp,
        saturation,
        ttft_cdf,
    }
}
