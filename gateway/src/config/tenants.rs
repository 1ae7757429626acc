//! `[[tenants]]` and `[policy]`. Tenants and admission arrive with issue 6:
//! the shapes are parsed and checked now so config files can carry them,
//! but every request is served as the `default` tenant until then.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// One `[[tenants]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// Name in metrics and logs (unique).
    pub name: String,
    /// SHA-256 (hex) of each API key of this tenant; keys are never stored.
    pub api_key_sha256: Vec<String>,
    /// Share of the workers under contention, relative to other tenants.
    pub weight: f64,
    /// Higher is served first.
    pub priority: i32,
    /// Tenants in one group share cached prefixes; empty: the tenant's own
    /// name (a shared cache leaks, through timing, what others sent).
    pub cache_group: String,
    /// Time-to-first-token objective in milliseconds (0: none).
    pub ttft_slo_ms: u64,
    /// `[tenants.limits]`.
    pub limits: TenantLimits,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            name: String::new(),
            api_key_sha256: Vec::new(),
            weight: 1.0,
            priority: 0,
            cache_group: String::new(),
            ttft_slo_ms: 0,
            limits: TenantLimits::default(),
        }
    }
}

/// A tenant's limits; 0 means none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    pub requests_per_s: f64,
    pub prompt_tokens_per_min: u64,
    pub max_concurrent: u32,
    pub max_prompt_tokens: usize,
}

impl TenantConfig {
    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let field = |f: &str| format!("tenants[{i}].{f}");
        if self.name.is_empty() {
            return Err(invalid(field("name"), "\"\"", "must not be empty"));
        }
        if !(self.weight > 0.0 && self.weight.is_finite()) {
            return Err(invalid(field("weight"), self.weight, "must be above 0"));
        }
        for (k, h) in self.api_key_sha256.iter().enumerate() {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    field(&format!("api_key_sha256[{k}]")),
                    format!("{h:?}"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                ));
            }
        }
        if !(self.limits.requests_per_s >= 0.0 && self.limits.requests_per_s.is_finite()) {
            return Err(invalid(
                field("limits.requests_per_s"),
                self.limits.requests_per_s,
                "must be 0 (none) or above",
            ));
        }
        Ok(())
    }
}

/// Which worker gets a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementPolicy {
    /// Each healthy worker in turn.
    RoundRobin,
    /// The healthy worker with the fewest prompt tokens in flight (the
    /// gateway's own ledger), then the shortest reported compute backlog.
    #[default]
    LeastLoaded,
}

impl PlacementPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            PlacementPolicy::RoundRobin => "round-robin",
            PlacementPolicy::LeastLoaded => "least-loaded",
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `round-robin` or `least-loaded`.
    pub placement: PlacementPolicy,
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
