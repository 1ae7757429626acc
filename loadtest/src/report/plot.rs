//! `--plot FILE`: one SVG with the runs side by side — the TTFT CDF of each
//! run, goodput next to throughput per run, and for ramps goodput against
//! the offered rate.

use std::path::Path;

use plotters::prelude::*;

use super::ReportError;
use super::summary::RunSummary;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot(e.to_string())
}

fn fmt_ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn ttft_cdf(area: &Area<'_>, runs: &[RunSummary]) -> Result<(), ReportError> {
    let xs = || runs.iter().flat_map(|r| r.ttft_cdf.iter().map(|p| p.0));
    let lo = xs().fold(f64::INFINITY, f64::min).max(0.001);
    let hi = xs().fold(0.0, f64::max).max(lo * 10.0);
    let (lo, hi) = if lo.is_finite() {
        (lo, hi)
    } else {
        (0.1, 1000.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption("TTFT distribution (CDF)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("TTFT (ms, log scale)")
        .y_desc("fraction of successful requests")
        .x_label_formatter(&|v| fmt_ms(*v))
        .draw()
        .map_err(err)?;
    for (i, r) in runs.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                r.ttft_cdf.iter().copied(),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(r.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn goodput_bars(area: &Area<'_>, runs: &[RunSummary]) -> Result<(), ReportError> {
    let top = runs
        .iter()
        .map(|r| r.overall.throughput_rps.max(r.offered_rps))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let n = runs.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Goodput per run (solid) vs throughput (light)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..top)
        .map_err(err)?;
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(runs.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.26 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("requests / s")
        .draw()
        .map_err(err)?;
    for (i, r) in runs.iter().enumerate() {
        let x = i as f64;
        let c = color(i);
        chart
            .draw_series([
                Rectangle::new(
                    [(x + 0.15, 0.0), (x + 0.85, r.overall.throughput_rps)],
                    c.mix(0.3).filled(),
                ),
                Rectangle::new(
                    [(x + 0.25, 0.0), (x + 0.75, r.overall.goodput_rps)],
                    c.filled(),
                ),
            ])
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("goodput {:.1}/s", r.overall.goodput_rps),
                (
                    x + 0.2,
                    r.overall.throughput_rps.max(r.overall.goodput_rps) + top * 0.07,
                ),
                ("sans-serif", 14),
            )))
            .map_err(err)?;
    }
    Ok(())
}

fn ramp_lines(area: &Area<'_>, runs: &[RunSummary]) -> Result<(), ReportError> {
    let top = runs
        .iter()
        .flat_map(|r| r.ramp.iter().map(|s| s.offered_rps.max(s.goodput_rps)))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption("Ramp: goodput vs offered load", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..top, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered (req/s)")
        .y_desc("goodput (req/s)")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (top, top)], BLACK.mix(0.3)))
        .map_err(err)?;
    for (i, r) in runs.iter().enumerate().filter(|(_, r)| !r.ramp.is_empty()) {
        let c = color(i);
        let pts: Vec<(f64, f64)> = r
            .ramp
            .iter()
            .map(|s| (s.offered_rps, s.goodput_rps))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(r.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// Writes the SVG.
pub fn write_plot(path: &Path, runs: &[RunSummary]) -> Result<(), ReportError> {
    let with_ramp = runs.iter().any(|r| !r.ramp.is_empty());
    let panels = if with_ramp { 3 } else { 2 };
    let root = SVGBackend::new(path, (560 * panels, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, panels as usize));
    ttft_cdf(&areas[0], runs)?;
    goodput_bars(&areas[1], runs)?;
    if with_ramp {
        ramp_lines(&areas[2], runs)?;
    }
    root.present().map_err(err)
}
