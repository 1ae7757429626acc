//! The table printed at the end: runs side by side, then the splits.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::reuse::ReuseStats;
use super::summary::{GroupStats, RunSummary};

const HEADER: [&str; 13] = [
    "requests",
    "ok",
    "errors",
    "req/s",
    "goodput/s",
    "out tok/s",
    "ttft p50",
    "p90",
    "p99",
    "mean",
    "tpot p50",
    "e2e p50",
    "e2e p99",
];

fn cells(g: &GroupStats) -> [String; 13] {
    let f1 = |v: f64| format!("{v:.1}");
    [
        g.requests.to_string(),
        g.ok.to_string(),
        g.errors.to_string(),
        f1(g.throughput_rps),
        f1(g.goodput_rps),
        f1(g.output_tokens_per_s),
        f1(g.ttft_ms.p50),
        f1(g.ttft_ms.p90),
        f1(g.ttft_ms.p99),
        f1(g.ttft_ms.mean),
        format!("{:.2}", g.tpot_ms.p50),
        f1(g.e2e_ms.p50),
        f1(g.e2e_ms.p99),
    ]
}

fn table(out: &mut String, title: &str, label: &str, rows: &[(String, &GroupStats)]) {
    let body: Vec<(String, Vec<String>)> = rows
        .iter()
        .map(|(n, g)| (n.clone(), cells(g).to_vec()))
        .collect();
    grid(
        out,
        &format!("{title} (latencies in ms)"),
        label,
        &HEADER,
        &body,
    );
}

/// Writes a titled grid: a name column, then right-aligned cells.
fn grid(
    out: &mut String,
    title: &str,
    label: &str,
    header: &[&str],
    rows: &[(String, Vec<String>)],
) {
    if rows.is_empty() {
        return;
    }
    let name_w = rows
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max(label.len());
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|(_, c)| c.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
                .max(header[i].len())
        })
        .collect();
    let _ = writeln!(out, "\n{title}");
    let _ = write!(out, "{label:<name_w$}");
    for (h, w) in header.iter().zip(&widths) {
        let _ = write!(out, "  {h:>w$}");
    }
    out.push('\n');
    for (name, c) in rows {
        let _ = write!(out, "{name:<name_w$}");
        for (v, w) in c.iter().zip(&widths) {
            let _ = write!(out, "  {v:>w$}");
        }
        out.push('\n');
    }
}

fn split<'a>(
    runs: &'a [RunSummary],
    pick: impl Fn(&'a RunSummary) -> &'a BTreeMap<String, GroupStats>,
) -> Vec<(String, &'a GroupStats)> {
    let single = runs.len() == 1;
    runs.iter()
        .flat_map(|r| {
            pick(r).iter().map(move |(k, g)| {
                let name = if single {
                    k.clone()
                } else {
                    format!("{} / {k}", r.name)
                };
                (name, g)
            })
        })
        .collect()
}

const REUSE_HEADER: [&str; 7] = [
    "ok",
    "cached",
    "w/ cached",
    "computed/req",
    "shared tok",
    "ttft p50",
    "ttft p99",
];

fn reuse_cells(g: &GroupStats) -> Vec<String> {
    let r: &ReuseStats = &g.reuse;
    let dash = || "-".to_string();
    vec![
        g.ok.to_string(),
        r.cached_share
            .map_or_else(dash, |s| format!("{:.1}%", s * 100.0)),
        if r.reported_requests == 0 {
            dash()
        } else {
            format!("{}/{}", r.cached_requests, g.ok)
        },
        r.computed_tokens_mean
            .map_or_else(dash, |m| format!("{m:.0}")),
        r.shared_tokens.map_or_else(dash, |s| s.to_string()),
        format!("{:.1}", g.ttft_ms.p50),
        format!("{:.1}", g.ttft_ms.p99),
    ]
}

/// The reuse table: overall, per kind, per class, per turn; one block per
/// run.
fn reuse(out: &mut String, runs: &[RunSummary]) {
    let single = runs.len() == 1;
    let mut rows = Vec::new();
    for r in runs {
        let name = |k: &str| {
            if single {
                k.to_string()
            } else {
                format!("{} / {k}", r.name)
            }
        };
        rows.push((name("all"), reuse_cells(&r.overall)));
        for (k, g) in &r.per_kind {
            rows.push((name(&format!("kind {k}")), reuse_cells(g)));
        }
        for (k, g) in &r.per_class {
            rows.push((name(&format!("class {k}")), reuse_cells(g)));
        }
        for (k, g) in &r.per_turn {
            rows.push((name(&format!("turn {k}")), reuse_cells(g)));
        }
    }
    grid(
        out,
        "Prefix reuse (cached = cached_tokens / prompt_tokens; computed = usage.cake.computed_tokens; ms)",
        "group",
        &REUSE_HEADER,
        &rows,
    );
    for r in runs {
        if let Some(w) = &r.waves {
            let cached = if w.reported_requests == 0 {
                "-".to_string()
            } else {
                w.cached_requests.to_string()
            };
            let t = &w.wave_time_ms;
            let _ = writeln!(
                out,
                "{}: waves: {}, cached {cached}/{}, wave time p50 {}, p99 {}, max {} (first send to last response end)",
                r.name,
                w.waves,
                w.requests,
                duration(t.p50),
                duration(t.p99),
                duration(t.max)
            );
        }
    }
}

/// Milliseconds as the unit a reader takes in at a glance.
fn duration(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

/// Renders every table for the given runs.
pub fn render(runs: &[RunSummary]) -> String {
    let mut out = String::new();
    let overall: Vec<(String, &GroupStats)> =
        runs.iter().map(|r| (r.name.clone(), &r.overall)).collect();
    table(&mut out, "Runs", "run", &overall);
    for r in runs {
        let _ = write!(
            out,
            "{}: {} planned at {:.1} req/s over {:.1} s, model {:?}; sends late by p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            r.name,
            r.planned,
            r.offered_rps,
            r.duration_s,
            r.model,
            r.send_lag_ms.p50,
            r.send_lag_ms.p99,
            r.send_lag_ms.max
        );
        if !r.overall.errors_by_status.is_empty() {
            let errs: Vec<String> = r
                .overall
                .errors_by_status
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect();
            let _ = write!(out, "; errors {}", errs.join(" "));
        }
        out.push('\n');
    }
    table(
        &mut out,
        "Per tenant",
        "tenant",
        &split(runs, |r| &r.per_tenant),
    );
    table(
        &mut out,
        "Per class (server's usage.cake.class)",
        "class",
        &split(runs, |r| &r.per_class),
    );
    table(
        &mut out,
        "Per prompt kind",
        "kind",
        &split(runs, |r| &r.per_kind),
    );
    reuse(&mut out, runs);
    for r in runs.iter().filter(|r| !r.ramp.is_empty()) {
        let _ = writeln!(out, "\nRamp of {} (req/s; ttft in ms)", r.name);
        let _ = writeln!(
            out,
            "{:>8}  {:>8}  {:>8}  {:>9}  {:>6}  {:>8}  {:>8}",
            "target", "offered", "ok/s", "goodput/s", "errors", "ttft p50", "ttft p99"
        );
        for s in &r.ramp {
            let _ = writeln!(
                out,
                "{:>8.1}  {:>8.1}  {:>8.1}  {:>9.1}  {:>6}  {:>8.1}  {:>8.1}",
                s.target_rps,
                s.offered_rps,
                s.throughput_rps,
                s.goodput_rps,
                s.errors,
                s.ttft_ms.p50,
                s.ttft_ms.p99
            );
        }
        if let Some(sat) = &r.saturation {
            let _ = write!(
                out,
                "peak goodput {:.1} req/s at {:.1} offered",
                sat.peak_goodput_rps, sat.at_offered_rps
            );
            match sat.knee_offered_rps {
                Some(k) => {
                    let _ = writeln!(out, "; goodput fell below 90% of offered at {k:.1} req/s");
                }
                None => {
                    let _ = writeln!(out, "; goodput kept up with the offered load to the end");
                }
            }
        }
    }
    out
}
