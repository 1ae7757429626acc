//! Results: the summary numbers, the end-of-run table, `--json` and `--plot`.

mod plot;
mod reuse;
mod summary;
mod table;

use std::path::Path;

use serde::Serialize;

pub use plot::write_plot;
pub use reuse::{ReuseStats, WaveRow, WaveStats};
pub use summary::{GroupStats, Lag, Percentiles, RampStep, RunSummary, Saturation, summarize};
pub use table::render as render_table;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Writing the file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Serializing failed.
    #[error("cannot serialize the report: {0}")]
    Json(#[from] serde_json::Error),
    /// Drawing failed.
    #[error("cannot draw the plot: {0}")]
    Plot(String),
}

#[derive(Serialize)]
struct JsonReport<'a> {
    tool: &'static str,
    version: &'static str,
    runs: &'a [RunSummary],
}

/// The `--json` document: `{"tool", "version", "runs": [...]}`.
pub fn to_json(runs: &[RunSummary]) -> Result<String, ReportError> {
    Ok(serde_json::to_string_pretty(&JsonReport {
        tool: "cake-loadtest",
        version: env!("CARGO_PKG_VERSION"),
        runs,
    })?)
}

/// Writes the `--json` document to `path`.
pub fn write_json(path: &Path, runs: &[RunSummary]) -> Result<(), ReportError> {
    let text = to_json(runs)?;
    std::fs::write(path, text + "\n").map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })
}
