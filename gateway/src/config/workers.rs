//! `[[workers]]`: where the gateway sends requests.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// How the gateway reaches a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorkerKind {
    /// An engine in the gateway's own process (built from `[model]`,
    /// `[engine]` and `[kv]`).
    #[default]
    Embedded,
    /// `cake worker` on another machine, over HTTP.
    Cake,
    /// Any OpenAI-compatible server (vLLM, another gateway): requests
    /// pass through as `/v1/completions` with token-id prompts; its load
    /// is estimated from what the gateway has in flight there.
    Openai,
}

impl WorkerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkerKind::Embedded => "embedded",
            WorkerKind::Cake => "cake",
            WorkerKind::Openai => "openai",
        }
    }
}

/// One `[[workers]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Name in usage, metrics and logs (unique).
    pub name: String,
    /// `embedded`, `cake` or `openai`.
    pub kind: WorkerKind,
    /// Base URL of a remote worker, e.g. `http://10.0.0.7:9000`.
    pub url: String,
    /// `openai`: the model name sent upstream (empty: the served name).
    pub upstream_model: String,
    /// `openai`: bearer token sent upstream (empty: none).
    pub api_key: String,
    /// Longest wait to connect and for a response's head, and for health,
    /// load and classify calls, in milliseconds.
    pub timeout_ms: u64,
    /// Longest gap between two events of a running request, in
    /// milliseconds; past it the request fails (never a hung stream).
    pub idle_timeout_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            name: "worker-0".into(),
            kind: WorkerKind::Embedded,
            url: String::new(),
            upstream_model: String::new(),
            api_key: String::new(),
            timeout_ms: 5_000,
            idle_timeout_ms: 120_000,
        }
    }
}

impl WorkerConfig {
    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let field = |f: &str| format!("workers[{i}].{f}");
        if self.name.is_empty() {
            return Err(invalid(field("name"), "\"\"", "must not be empty"));
        }
        match self.kind {
            WorkerKind::Embedded => {
                if !self.url.is_empty() {
                    return Err(invalid(
                        field("url"),
                        format!("{:?}", self.url),
                        "an embedded worker has no url",
                    ));
                }
            }
            WorkerKind::Cake | WorkerKind::Openai => {
                let ok = self
                    .url
                    .parse::<http::Uri>()
                    .ok()
                    .is_some_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
                if !ok {
                    return Err(invalid(
                        field("url"),
                        format!("{:?}", self.url),
                        "must be an http:// URL with a host (https is not supported yet)",
                    ));
                }
            }
        }
        for (f, v) in [
            ("timeout_ms", self.timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(field(f), v, "must be above 0"));
            }
        }
        Ok(())
    }
}
