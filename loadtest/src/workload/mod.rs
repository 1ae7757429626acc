//! Workload files (`config/workloads/*.toml`): reading and checking them.

mod fanout;
mod types;
mod validate;

use std::path::Path;

pub use types::{
    Arrival, ArrivalProcess, Conversation, ConversationMode, Dist, DistKind, Fanout, Fresh, Mix,
    Output, PromptFormat, SharedPrefix, Skew, Tenant, WavePacing, Workload,
};
pub use validate::MAX_REQUESTS;

/// Why a workload could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a workload (unknown key, wrong type).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A value is out of range.
    #[error("{field} = {value}: {reason}")]
    Invalid {
        /// The field, as a TOML path (`arrival.rate`, `tenants[1].share`).
        field: String,
        /// The offending value.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
}

impl Workload {
    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, WorkloadError> {
        let w: Workload = toml::from_str(text).map_err(|e| WorkloadError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        w.validate()?;
        Ok(w)
    }

    /// Reads, parses and validates a workload file.
    pub fn load(path: &Path) -> Result<Self, WorkloadError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The tenants to send as: the configured ones, or one `default`.
    pub fn effective_tenants(&self) -> Vec<Tenant> {
        if self.tenants.is_empty() {
            vec![Tenant::default()]
        } else {
            self.tenants.clone()
        }
    }

    /// Applies `--rate` and `--duration`. For a ramp, `rate` sets the last
    /// step's rate. The result is validated again.
    pub fn with_overrides(
        mut self,
        rate: Option<f64>,
        duration_s: Option<f64>,
    ) -> Result<Self, WorkloadError> {
        if let Some(r) = rate {
            match self.arrival.process {
                ArrivalProcess::Ramp => self.arrival.end_rate = r,
                _ => self.arrival.rate = r,
            }
        }
        if let Some(d) = duration_s {
            self.duration_s = d;
        }
        self.validate()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = Workload::from_toml("[arrival]\nrat = 3.0\n", "x.toml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("rat"), "{msg}");
        let e = Workload::from_toml("[fresh.prompt_tokens]\ndist = \"fixed\"\nvalu = 3\n", "x")
            .unwrap_err();
        assert!(e.to_string().contains("valu"), "{e}");
    }

    #[test]
    fn empty_file_is_the_default() {
        let w = Workload::from_toml("", "empty").unwrap();
        assert_eq!(w, Workload::default());
        assert_eq!(w.effective_tenants().len(), 1);
    }

    #[test]
    fn overrides_apply_and_revalidate() {
        let w = Workload::default()
            .with_overrides(Some(99.0), Some(2.0))
            .unwrap();
        assert_eq!(w.arrival.rate, 99.0);
        assert_eq!(w.duration_s, 2.0);
        assert!(
            Workload::default()
                .with_overrides(Some(-1.0), None)
                .is_err()
        );
        let mut ramp = Workload::default();
        ramp.arrival.process = ArrivalProcess::Ramp;
        let ramp = ramp.with_overrides(Some(77.0), None).unwrap();
        assert_eq!(ramp.arrival.end_rate, 77.0);
    }

    #[test]
    fn every_shipped_workload_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/workloads");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let w = Workload::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    !crate::plan::Plan::build(&w).items.is_empty(),
                    "{}",
                    path.display()
                );
                n += 1;
            }
        }
        assert!(
            n >= 3,
            "expected the shipped workloads in {}",
            dir.display()
        );
    }
}
