//! The table printed at the end: runs side by side, then the splits.

use std::collections::BTreeMap;
use std::fmt::Write;

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
    if rows.is_empty() {
        return;
    }
    let name_w = rows
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max(label.len());
    let body: Vec<[String; 13]> = rows.iter().map(|(_, g)| cells(g)).collect();
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|i| {
            body.iter()
                .map(|c| c[i].len())
                .max()
                .unwrap_or(0)
                .max(HEADER[i].len())
        })
        .collect();
    let _ = writeln!(out, "\n{title} (latencies in ms)");
    let _ = write!(out, "{label:<name_w$}");
    for (h, w) in HEADER.iter().zip(&widths) {
        let _ = write!(out, "  {h:>w$}");
    }
    out.push('\n');
    for ((name, _), c) in rows.iter().zip(&body) {
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
