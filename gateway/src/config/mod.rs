//! `cake.toml`: the whole configuration, typed.
//!
//! Every field has a default (so an empty file is a working config),
//! unknown keys are errors naming the key, and [`Config::validate`] names
//! the field, the value and the reason. `[engine]` and `[kv]` are the
//! engine's own types ([`EngineConfig`], [`KvConfig`]).

mod diff;
mod server;
mod tenants;
mod workers;

use std::path::{Path, PathBuf};

use cake_engine::kv::KvConfig;
use cake_engine::worker::EngineConfig;
use serde::{Deserialize, Serialize};

pub use diff::restart_only_changes;
pub use server::{ModelConfig, ServerConfig};
pub use tenants::{PlacementPolicy, PolicyConfig, TenantConfig, TenantLimits};
pub use workers::{WorkerConfig, WorkerKind};

/// The whole `cake.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listening, limits, timeouts, health checks.
    pub server: ServerConfig,
    /// `[model]`: which checkpoint is served and under what name.
    pub model: ModelConfig,
    /// `[engine]`: how each embedded (or `cake worker`) engine runs.
    pub engine: EngineConfig,
    /// `[kv]`: chunking, codec and the store tiers.
    pub kv: KvConfig,
    /// `[[workers]]`: where requests go. Empty: one embedded worker.
    pub workers: Vec<WorkerConfig>,
    /// `[[tenants]]`: who may call; none: everyone is `default`.
    pub tenants: Vec<TenantConfig>,
    /// `[policy]`: placement and admission.
    pub policy: PolicyConfig,
}

/// A config that cannot be used: which file, which field, why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{field} = {value}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
}

pub(crate) fn invalid(
    field: impl Into<String>,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `EngineConfig::validate` says `field = value: reason` (or
/// `field: reason`) in one string; split it back into its parts.
fn engine_error(msg: String) -> ConfigError {
    if let Some((field, rest)) = msg.split_once(" = ")
        && let Some((value, reason)) = rest.split_once(": ")
    {
        return invalid(field, value, reason);
    }
    match msg.split_once(": ") {
        Some((field, reason)) => invalid(field, "\"\"", reason),
        None => invalid("engine", "\"\"", msg),
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text (no validation).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<config>".into(),
            message: e.to_string(),
        })
    }

    /// Checks every section and the agreements between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.model.validate()?;
        self.engine.validate().map_err(engine_error)?;
        // Any build accepts a GPU's spelling (one without `cuda`, or
        // without a GPU, serves on the CPU and says why at start).
        if !cake_engine::Device::is_valid_spec(&self.engine.device) {
            return Err(invalid(
                "engine.device",
                &self.engine.device,
                "must be `cpu`, `cuda` or `cuda:N`",
            ));
        }
        self.kv
            .validate()
            .map_err(|e| invalid(e.field, e.value, e.reason))?;
        if self.engine.chunk_tokens != self.kv.chunk_tokens as usize {
            return Err(invalid(
                "engine.chunk_tokens",
                self.engine.chunk_tokens,
                format!(
                    "must equal kv.chunk_tokens ({}): chunk keys depend on it",
                    self.kv.chunk_tokens
                ),
            ));
        }
        if self.engine.codec != self.kv.codec {
            return Err(invalid(
                "engine.codec",
                format!("{:?}", self.engine.codec).to_lowercase(),
                format!(
                    "must equal kv.codec ({}): chunk keys depend on it",
                    format!("{:?}", self.kv.codec).to_lowercase()
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, w) in self.workers.iter().enumerate() {
            w.validate(i)?;
            if !names.insert(w.name.as_str()) {
                return Err(invalid(
                    format!("workers[{i}].name"),
                    &w.name,
                    "two workers have this name",
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            t.validate(i)?;
            for (k, h) in t.api_key_sha256.iter().enumerate() {
                if !keys.insert(h.to_ascii_lowercase()) {
                    return Err(invalid(
                        format!("tenants[{i}].api_key_sha256[{k}]"),
                        format!("{h:?}"),
                        "another tenant (or this one) already has this key",
                    ));
                }
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    format!("tenants[{i}].name"),
                    &t.name,
                    "two tenants have this name",
                ));
            }
        }
        self.policy.validate()?;
        Ok(())
    }

    /// The workers to run: the configured ones, or one embedded worker.
    pub fn effective_workers(&self) -> Vec<WorkerConfig> {
        if self.workers.is_empty() {
            vec![WorkerConfig {
                name: self.engine.name.clone(),
                ..WorkerConfig::default()
            }]
        } else {
            self.workers.clone()
        }
    }

    /// The data folder (models, KV files): `--data-dir`, else
    /// `server.data_dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.server.data_dir.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_and_valid() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        assert_eq!(c.effective_workers().len(), 1);
    }

    #[test]
    fn unknown_keys_name_the_key() {
        for text in [
            "[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n",
            "[engine]\nbudget = 3\n",
            "[kv.disk]\nfolder = \"x\"\n",
            "[[workers]]\nname = \"a\"\nadress = \"x\"\n",
            "colour = 1\n",
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            let key = ["listen_port", "budget", "folder", "adress", "colour"]
                .into_iter()
                .find(|k| text.contains(k))
                .unwrap();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn cross_section_checks_name_the_field() {
        let mut c = Config::default();
        c.engine.chunk_tokens = 128;
        c.engine.token_budget = 512;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("engine.chunk_tokens = 128"), "{e}");

        let mut c = Config::default();
        c.engine.max_running = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("engine.max_running"), "{e}");

        for ok in ["cpu", "cuda", "cuda:1"] {
            let mut c = Config::default();
            c.engine.device = ok.into();
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in ["tpu", "cuda:x", "gpu0"] {
            let mut c = Config::default();
            c.engine.device = bad.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with("engine.device"), "{e}");
        }
    }
}
