//! `[server]` and `[model]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `[server]`: the gateway's HTTP side and its worker pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the gateway (`cake serve`) listens on.
    pub listen: String,
    /// Address `cake worker` listens on.
    pub worker_listen: String,
    /// Folder for models created on first start and the disk KV cache.
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Longest prompt accepted, in tokens (longer: 413); 0 means the
    /// model's context length.
    pub max_prompt_tokens: usize,
    /// `max_tokens` of a chat request that does not say.
    pub chat_default_max_tokens: usize,
    /// Longest wait for a request's headers and body, in milliseconds
    /// (a client that stalls is disconnected).
    pub read_timeout_ms: u64,
    /// Longest a whole non-streaming request may take, in milliseconds
    /// (0: no limit). Streams are bounded by the workers' idle timeout.
    pub request_timeout_ms: u64,
    /// Workers tried for one request before giving up (a retry happens
    /// only while nothing has been sent to the client).
    pub max_attempts: usize,
    /// How often each worker's health and load are checked, in
    /// milliseconds.
    pub health_interval_ms: u64,
    /// Consecutive failures (checks or requests) that mark a worker down;
    /// one answered check brings it back.
    pub down_after_failures: u32,
    /// On SIGTERM or SIGINT: how long requests in flight may run on, and
    /// the KV write-behind may flush, in milliseconds. What is left then
    /// ends with an error (an error event and `[DONE]` for a stream).
    pub drain_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8000".into(),
            worker_listen: "127.0.0.1:9000".into(),
            data_dir: PathBuf::from("data"),
            max_body_bytes: 8 << 20,
            max_prompt_tokens: 0,
            chat_default_max_tokens: 256,
            read_timeout_ms: 30_000,
            request_timeout_ms: 600_000,
            max_attempts: 2,
            health_interval_ms: 2_000,
            down_after_failures: 3,
            drain_timeout_ms: 30_000,
        }
    }
}

fn check_addr(field: &str, v: &str) -> Result<(), ConfigError> {
    v.parse::<std::net::SocketAddr>().map(|_| ()).map_err(|e| {
        invalid(
            field,
            format!("{v:?}"),
            format!("not an address (host:port): {e}"),
        )
    })
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_addr("server.listen", &self.listen)?;
        check_addr("server.worker_listen", &self.worker_listen)?;
        if self.max_body_bytes < 1024 {
            return Err(invalid(
                "server.max_body_bytes",
                self.max_body_bytes,
                "must be at least 1024",
            ));
        }
        for (field, v) in [
            ("server.read_timeout_ms", self.read_timeout_ms),
            ("server.health_interval_ms", self.health_interval_ms),
        ] {
            if v == 0 {
                return Err(invalid(field, v, "must be above 0"));
            }
        }
        if self.chat_default_max_tokens == 0 {
            return Err(invalid(
                "server.chat_default_max_tokens",
                0,
                "must be above 0",
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid("server.max_attempts", 0, "must be at least 1"));
        }
        if self.down_after_failures == 0 {
            return Err(invalid(
                "server.down_after_failures",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `[model]`: the checkpoint served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Checkpoint folder (`config.json`, safetensors, `tokenizer.json`)
    /// or a GGUF file (llama.cpp's format). Empty: the synthetic `preset`, created under the data folder on
    /// first start.
    pub path: PathBuf,
    /// Synthetic model used when `path` is empty (`tiny`, `small`, ...).
    pub preset: String,
    /// Seed of the synthetic model's weights.
    pub seed: u64,
    /// Model id clients send as `model` and `/v1/models` lists. Empty: the
    /// preset's name, or the checkpoint folder's name.
    pub name: String,
    /// Context length in tokens; 0 reads `max_position_embeddings` from
    /// the checkpoint's `config.json`.
    pub max_context: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: PathBuf::new(),
            preset: "small".into(),
            seed: 0,
            name: String::new(),
            max_context: 0,
        }
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return check_preset(&self.preset);
        }
        Ok(())
    }

    /// The model id served: `name`, else the preset's or folder's name.
    pub fn served_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        if self.path.as_os_str().is_empty() {
            return self.preset.clone();
        }
        // A GGUF file is served as its name without `.gguf`.
        let name = if self.path.extension().is_some_and(|e| e == "gguf") {
            self.path.file_stem()
        } else {
            self.path.file_name()
        };
        name.map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    }
}

/// The synthetic preset served when `model.path` is empty: a known name.
#[cfg(feature = "tools")]
fn check_preset(preset: &str) -> Result<(), ConfigError> {
    if cake_engine::init::preset(preset).is_none() {
        return Err(invalid(
            "model.preset",
            format!("{preset:?}"),
            format!(
                "unknown preset (known: {})",
                cake_engine::init::PRESETS.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Without the `tools` feature no preset can be created: a checkpoint is
/// needed.
#[cfg(not(feature = "tools"))]
fn check_preset(preset: &str) -> Result<(), ConfigError> {
    Err(invalid(
        "model.path",
        "\"\"",
        format!(
            "a checkpoint is needed: this build has no `tools` feature to create preset {preset:?}"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_names() {
        let m = |path: &str, name: &str| ModelConfig {
            path: path.into(),
            name: name.into(),
            ..ModelConfig::default()
        };
        assert_eq!(m("", "").served_name(), "small");
        assert_eq!(m("/models/Llama-3-8B", "").served_name(), "Llama-3-8B");
        assert_eq!(
            m("/m/SmolLM2-135M-Instruct.Q4_1.gguf", "").served_name(),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        assert_eq!(m("/m/x.gguf", "mine").served_name(), "mine");
    }
}
