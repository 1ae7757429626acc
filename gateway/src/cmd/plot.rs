//! SVG plots of benchmark reports.

use std::path::Path;

use cake_engine::bench::ttft::TtftReport;
use plotters::prelude::*;

const STRATEGIES: [(&str, RGBColor); 5] = [
    ("compute", RGBColor(200, 60, 60)),
    ("load", RGBColor(60, 90, 200)),
    ("cake", RGBColor(20, 150, 60)),
    ("auto", RGBColor(230, 150, 0)),
    ("oracle", RGBColor(90, 90, 90)),
];

/// TTFT against link bandwidth, one panel per context, one line per
/// strategy (log-log).
pub fn ttft_plot(r: &TtftReport, path: &Path) -> anyhow::Result<()> {
    let mut contexts: Vec<usize> = r.rows.iter().map(|x| x.context).collect();
    contexts.dedup();
    let root = SVGBackend::new(path, (560 * contexts.len().max(1) as u32, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, contexts.len().max(1)));
    for (panel, &ctx) in panels.iter().zip(&contexts) {
        let rows: Vec<_> = r.rows.iter().filter(|x| x.context == ctx).collect();
        let (xmin, xmax) = rows.iter().fold((f64::MAX, 0f64), |(a, b), x| {
            (
                a.min(x.bandwidth_bytes_per_s),
                b.max(x.bandwidth_bytes_per_s),
            )
        });
        let (ymin, ymax) = rows.iter().fold((f64::MAX, 0f64), |(a, b), x| {
            (a.min(x.ttft_ms), b.max(x.ttft_ms))
        });
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("context {ctx} tokens"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (xmin / 1e9 * 0.8..xmax / 1e9 * 1.25).log_scale(),
                (ymin * 0.8..ymax * 1.25).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("link bandwidth, GB/s")
            .y_desc("TTFT, ms")
            .draw()?;
        for (name, color) in STRATEGIES {
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|x| x.strategy == name)
                .map(|x| (x.bandwidth_bytes_per_s / 1e9, x.ttft_ms))
                .collect();
            let style = ShapeStyle::from(color).stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
