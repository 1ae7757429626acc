//! `cake.toml`: the whole configuration, typed.
//!
//! Every field has a default (so an empty file is a working config),
//! unknown keys are errors naming the key, and [`Config::validate`] names
//! the field, the value and the reason. `[engine]` and `[kv]` are the
//! engine's own types ([`EngineConfig`], [`KvConfig`]); the chunk format
//! (`chunk_tokens`, `codec`) is `[kv]`'s alone ([`Config::engine_config`]
//! hands it to the engine).

mod diff;
mod server;
mod tenants;
mod workers;

use std::path::{Path, PathBuf};

use cake_engine::kv::KvConfig;
use cake_engine::worker::EngineConfig;
use cake_policy::Invalid;
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
    /// `[engine]`: how each embedded (or `cake worker`) engine runs. Its
    /// `chunk_tokens` and `codec` are not read from the file: an engine is
    /// started with [`Config::engine_config`], which takes them from `[kv]`.
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
    /// `field = value: reason`: the one shape every section's
    /// `validate()` returns, the engine's and the policy's included.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

pub(crate) fn invalid(
    field: impl Into<String>,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid(Invalid::new(field, value, reason))
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
        // `[kv]` first: the engine's checks read its chunk size.
        self.kv.validate()?;
        self.engine_config().validate()?;
        // Any build accepts a GPU's spelling (one without `cuda`, or
        // without a GPU, serves on the CPU and says why at start).
        if !cake_engine::Device::is_valid_spec(&self.engine.device) {
            return Err(invalid(
                "engine.device",
                &self.engine.device,
                "must be `cpu`, `cuda` or `cuda:N`",
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

    /// `[engine]` with the chunk format of `[kv]` (`kv.chunk_tokens`,
    /// `kv.codec`): what an engine over this config's store runs with.
    pub fn engine_config(&self) -> EngineConfig {
        self.engine.clone().with_chunks_of(&self.kv)
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
        let c = Config::parse("[engine]\nchunk_tokens = 128\ntoken_budget = 512\n").unwrap();
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

    #[test]
    fn an_old_file_with_the_chunk_format_in_engine_is_refused_naming_the_new_key() {
        let c = Config::parse("[engine]\nchunk_tokens = 128\n[kv]\nchunk_tokens = 128\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("engine.chunk_tokens = 128: moved to `kv.chunk_tokens`"),
            "{e}"
        );
        let c = Config::parse("[engine]\ncodec = \"bf16\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("engine.codec = \"bf16\": moved to `kv.codec`"),
            "{e}"
        );
        // Set once, in [kv], the engine runs with it.
        let c = Config::parse("[kv]\nchunk_tokens = 128\ncodec = \"bf16\"\n").unwrap();
        c.validate().unwrap();
        let ec = c.engine_config();
        assert_eq!(ec.chunk_tokens, 128);
        assert_eq!(ec.codec, cake_engine::kv::Codec::Bf16);
    }

    #[test]
    fn engine_kv_and_tenant_errors_arrive_with_field_value_and_reason() {
        let fields = |text: &str| match Config::parse(text).unwrap().validate() {
            Err(ConfigError::Invalid(e)) => (e.field, e.value, e.reason),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            fields("[engine]\nio_queue_depth = 65\n"),
            (
                "engine.io_queue_depth".into(),
                "65".into(),
                "must be 1..=64".into()
            )
        );
        assert_eq!(
            fields("[engine]\nname = \"\"\n"),
            (
                "engine.name".into(),
                "\"\"".into(),
                "must not be empty".into()
            )
        );
        assert_eq!(
            fields("[engine]\ntoken_budget = 256\n[kv]\nchunk_tokens = 512\n"),
            (
                "engine.token_budget".into(),
                "256".into(),
                "must hold at least one chunk (kv.chunk_tokens = 512)".into()
            )
        );
        assert_eq!(
            fields("[kv]\nwrite_behind_bytes = 0\n"),
            (
                "kv.write_behind_bytes".into(),
                "0".into(),
                "must be above 0".into()
            )
        );
        assert_eq!(
            fields("[[tenants]]\nname = \"t\"\nweight = 0\n"),
            (
                "tenants[0].weight".into(),
                "0".into(),
                "must be at least 1".into()
            )
        );
    }
}
