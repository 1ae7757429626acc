//! `[fanout]`: waves of requests that share a prefix nobody has seen yet.
//!
//! Each wave is `wave_size` requests over one new document (never reused by
//! another wave), each with its own short question, all sent at the same
//! instant. This is the shape a cache meets when an agent or a batch job
//! asks several questions about a document it has just received: the
//! requests race to compute the same prefix.

use serde::{Deserialize, Serialize};

use super::WorkloadError;
use super::types::Dist;
use super::validate::{at_least_one, dist, invalid, positive};

/// Largest wave: all its requests are sent at once.
const MAX_WAVE_SIZE: u32 = 10_000;
/// Longest wave document (it is generated per request).
const MAX_DOCUMENT_TOKENS: u32 = 1_000_000;

/// The fan-out waves of a workload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Fanout {
    /// Requests per wave, sent together.
    pub wave_size: u32,
    /// Number of waves; 0 sends waves until `duration_s` has passed.
    pub waves: u32,
    /// When the next wave leaves.
    pub pacing: WavePacing,
    /// `interval`: seconds between wave starts (the first at 0).
    pub interval_s: f64,
    /// Length of each wave's document (words in `text` format).
    pub document_tokens: u32,
    /// Length of the question each request appends to the document.
    pub question_tokens: Dist,
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout {
            wave_size: 8,
            waves: 0,
            pacing: WavePacing::Interval,
            interval_s: 10.0,
            document_tokens: 6000,
            question_tokens: Dist::uniform(8, 32),
        }
    }
}

/// When a wave leaves.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WavePacing {
    /// Every `interval_s`, whatever the server does (open loop).
    #[default]
    Interval,
    /// The moment the previous wave's last response has ended (closed
    /// loop): the next document arrives while the cache still holds the
    /// last one.
    BackToBack,
}

impl Fanout {
    /// Wave start offsets for `interval` pacing within `duration_s`.
    pub(crate) fn interval_waves(&self, duration_s: f64) -> u64 {
        let fit = (duration_s / self.interval_s).ceil().max(1.0) as u64;
        if self.waves == 0 {
            fit
        } else {
            fit.min(u64::from(self.waves))
        }
    }

    /// Checks every field (`duration_s` bounds `interval` waves).
    pub(crate) fn validate(&self, duration_s: f64, max_requests: f64) -> Result<(), WorkloadError> {
        at_least_one("fanout.wave_size", u64::from(self.wave_size))?;
        if self.wave_size > MAX_WAVE_SIZE {
            return Err(invalid(
                "fanout.wave_size",
                self.wave_size,
                format!("must be at most {MAX_WAVE_SIZE}"),
            ));
        }
        at_least_one("fanout.document_tokens", u64::from(self.document_tokens))?;
        if self.document_tokens > MAX_DOCUMENT_TOKENS {
            return Err(invalid(
                "fanout.document_tokens",
                self.document_tokens,
                format!("must be at most {MAX_DOCUMENT_TOKENS}"),
            ));
        }
        dist("fanout.question_tokens", &self.question_tokens)?;
        if self.pacing == WavePacing::Interval {
            positive("fanout.interval_s", self.interval_s)?;
            let n = self.interval_waves(duration_s) as f64 * f64::from(self.wave_size);
            if n > max_requests {
                return Err(invalid(
                    "fanout.interval_s",
                    self.interval_s,
                    format!("{n:.0} requests, over the limit of {max_requests}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Workload;

    fn err(toml: &str) -> String {
        Workload::from_toml(toml, "t").unwrap_err().to_string()
    }

    #[test]
    fn parses_with_defaults_and_rejects_unknown_keys() {
        let w = Workload::from_toml("[mix]\nfresh = 0.0\n[fanout]\nwave_size = 4\n", "t").unwrap();
        let f = w.fanout.unwrap();
        assert_eq!(f.wave_size, 4);
        assert_eq!(f.document_tokens, 6000);
        assert_eq!(f.pacing, WavePacing::Interval);
        let w = Workload::from_toml("[fanout]\npacing = \"back_to_back\"\n", "t").unwrap();
        assert_eq!(w.fanout.unwrap().pacing, WavePacing::BackToBack);
        assert!(err("[fanout]\nwave_sise = 4\n").contains("wave_sise"));
        assert!(err("[fanout]\npacing = \"sometimes\"\n").contains("sometimes"));
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err("[fanout]\nwave_size = 0\n").contains("fanout.wave_size = 0"));
        assert!(err("[fanout]\ninterval_s = 0.0\n").contains("fanout.interval_s"));
        assert!(err("[fanout]\ndocument_tokens = 0\n").contains("fanout.document_tokens"));
        let e = err("[fanout]\nquestion_tokens = { dist = \"uniform\", min = 9, max = 3 }\n");
        assert!(e.contains("fanout.question_tokens.max"), "{e}");
        // Back to back needs no interval.
        Workload::from_toml(
            "[fanout]\npacing = \"back_to_back\"\ninterval_s = 0.0\n",
            "t",
        )
        .unwrap();
    }

    #[test]
    fn interval_waves_fit_the_duration_or_the_count() {
        let f = Fanout {
            interval_s: 10.0,
            ..Fanout::default()
        };
        assert_eq!(f.interval_waves(30.0), 3);
        assert_eq!(f.interval_waves(31.0), 4);
        let f = Fanout { waves: 2, ..f };
        assert_eq!(f.interval_waves(30.0), 2);
    }
}
