//! `[[tenants]]` and `[policy]`: who may call, with what share, limits and
//! TTFT objective, and how the gateway admits and places requests. The
//! decisions themselves are `cake_policy`'s; this file only parses and
//! checks, and turns a tenant into a [`cake_policy::TenantPolicy`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cake_policy::PlacementPolicy;

use super::{ConfigError, invalid};

/// One `[[tenants]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// Name in metrics and logs (unique): 1 to 64 letters, digits, `-`,
    /// `_` or `.`.
    pub name: String,
    /// SHA-256 (hex) of each API key of this tenant; keys are never stored
    /// (`printf %s KEY | sha256sum`).
    pub api_key_sha256: Vec<String>,
    /// Share of the workers under contention, relative to other tenants of
    /// the same priority (at least 1).
    pub weight: u32,
    /// Higher is served first (0 to 255).
    pub priority: u8,
    /// Tenants in one group share cached prefixes; empty: the tenant's own
    /// name (a shared cache leaks, through timing, what others sent).
    pub cache_group: String,
    /// Time-to-first-token objective in milliseconds; a request predicted
    /// to miss it is refused at once (429). 0: none.
    pub ttft_slo_ms: u64,
    /// Longest a request may wait in the gateway's queue, in milliseconds;
    /// 0: `policy.queue_deadline_ms`.
    pub queue_deadline_ms: u64,
    /// `[tenants.limits]`.
    pub limits: TenantLimits,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            name: String::new(),
            api_key_sha256: Vec::new(),
            weight: 1,
            priority: 0,
            cache_group: String::new(),
            ttft_slo_ms: 0,
            queue_deadline_ms: 0,
            limits: TenantLimits::default(),
        }
    }
}

/// A tenant's limits; 0 means none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    /// Requests admitted per second (fractions allowed).
    pub requests_per_s: f64,
    /// Prompt tokens admitted per minute.
    pub prompt_tokens_per_min: u64,
    /// Requests at once, queued or running (a slot is held until the
    /// response's last byte, an error or the client leaving).
    pub max_concurrent: u32,
    /// Prompt tokens in one request (longer: 413).
    pub max_prompt_tokens: u64,
}

fn some_if<T: PartialEq + Default>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

impl TenantConfig {
    /// The tenant's policy, as `cake_policy` decides with it.
    pub fn policy(&self) -> cake_policy::TenantPolicy {
        let l = &self.limits;
        cake_policy::TenantPolicy {
            name: self.name.clone(),
            weight: self.weight,
            priority: self.priority,
            limits: cake_policy::TenantLimits {
                requests_per_s: (l.requests_per_s > 0.0).then_some(l.requests_per_s),
                prompt_tokens_per_min: some_if(l.prompt_tokens_per_min),
                max_concurrent: some_if(l.max_concurrent),
                max_prompt_tokens: some_if(l.max_prompt_tokens),
            },
            ttft_slo: some_if(self.ttft_slo_ms).map(Duration::from_millis),
            queue_deadline: some_if(self.queue_deadline_ms).map(Duration::from_millis),
            cache_group: if self.cache_group.is_empty() {
                self.name.clone()
            } else {
                self.cache_group.clone()
            },
        }
    }

    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let field = |f: &str| format!("tenants[{i}].{f}");
        if !(self.limits.requests_per_s >= 0.0 && self.limits.requests_per_s.is_finite()) {
            return Err(invalid(
                field("limits.requests_per_s"),
                self.limits.requests_per_s,
                "must be 0 (none) or above",
            ));
        }
        self.policy()
            .validate()
            .map_err(|e| e.error.within(&format!("tenants[{i}]")))?;
        for (k, h) in self.api_key_sha256.iter().enumerate() {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    field(&format!("api_key_sha256[{k}]")),
                    format!("{h:?}"),
                    "must be 64 hex digits (the SHA-256 of the key: printf %s KEY | sha256sum)",
                ));
            }
        }
        Ok(())
    }
}

/// `[policy]`: placement and admission. Reloaded with the tenants, except
/// the queue sizes and the quantum (read at start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `adaptive` (lowest predicted TTFT under the Cake cost model),
    /// `round-robin`, `least-loaded` or `cache-affinity`.
    pub placement: PlacementPolicy,
    /// Requests the gateway dispatches at once, all workers together;
    /// more wait in the tenants' queues. 0: no gateway-wide cap.
    pub max_concurrent: u32,
    /// Requests dispatched to one worker at once; when every healthy worker
    /// is at it, requests wait in the tenants' queues. 0: no cap.
    pub max_in_flight_per_worker: u32,
    /// Extra dispatch slots per worker that only tenants of priority above
    /// 0 may take, when no one of their priority or higher waits: a flood
    /// of lower priority holding every slot does not make them queue
    /// behind its running requests. 0: none.
    pub priority_headroom: u32,
    /// Requests one tenant may have waiting (more: 429 `queue_full`).
    pub queue_per_tenant: usize,
    /// Requests all tenants may have waiting (more: 429 `queue_full`).
    pub queue_total: usize,
    /// Longest a request waits in the queue, in milliseconds, unless its
    /// tenant says otherwise (past it: 429 `queue_timeout`).
    pub queue_deadline_ms: u64,
    /// Prompt tokens a weight-1 tenant is served per turn of the fair
    /// queue (deficit round robin); about one typical prompt.
    pub fair_quantum_tokens: u64,
    /// Redis URL (`redis://host:port/db`) where the tenants' request-rate
    /// and prompt-token-rate limits are kept, shared by every gateway that
    /// points at it. Empty: each gateway enforces its limits alone.
    pub limits_redis: String,
    /// Redis Cluster seed nodes (`["redis://host:port", ...]`) for the same
    /// limits instead of `limits_redis`: a tenant's buckets share a hash
    /// slot (`{tenant}` in their keys), so one check stays one atomic
    /// script on one master.
    pub limits_redis_nodes: Vec<String>,
    /// Prefix of the limit keys in `limits_redis`.
    pub limits_redis_prefix: String,
    /// Longest wait for Redis on a limit check, in milliseconds; past it
    /// (or with Redis down) the gateway's own limits decide.
    pub limits_redis_timeout_ms: u64,
    /// Chunks the gateway remembers per worker as held in that worker's
    /// own tiers (memory, disk): the prompts it placed there, least
    /// recently used out first; at least this many are kept, at most
    /// twice. At least what a worker's local tiers keep (their capacity
    /// over the chunk size). `adaptive` counts a prompt's chunks held
    /// there as ready on that worker. 0: remember none. Read at start.
    pub local_chunks_per_worker: usize,
    /// Read bandwidth of the store the workers share, in bytes/s, for the
    /// chunks a worker does not hold in its own tiers. A worker's measured
    /// bandwidth blends its local tiers' reads with the shared store's, so
    /// with local tiers it overstates a remote fetch. Each worker reaches
    /// it over a link of its own (its own I/O queue). 0: the workers'
    /// measured figure.
    pub shared_store_bandwidth_bytes_per_s: f64,
    /// `adaptive` scores a worker by the request's predicted TTFT there
    /// plus this many times its TTFT there on an idle worker: the work it
    /// adds, which delays whoever queues behind it. At 0 a request leaves
    /// the worker holding its prefix as soon as the backlogs differ by
    /// the prefill it redoes elsewhere, and the fleet saturates sooner.
    pub work_weight: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            placement: PlacementPolicy::Adaptive,
            max_concurrent: 0,
            max_in_flight_per_worker: 32,
            priority_headroom: 1,
            queue_per_tenant: 256,
            queue_total: 1024,
            queue_deadline_ms: 30_000,
            fair_quantum_tokens: 256,
            limits_redis: String::new(),
            limits_redis_nodes: Vec::new(),
            limits_redis_prefix: "cake:limits:".into(),
            limits_redis_timeout_ms: 50,
            local_chunks_per_worker: 4096,
            shared_store_bandwidth_bytes_per_s: 0.0,
            work_weight: cake_policy::DEFAULT_WORK_WEIGHT,
        }
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (f, v) in [
            ("policy.queue_per_tenant", self.queue_per_tenant as u64),
            ("policy.queue_total", self.queue_total as u64),
            ("policy.queue_deadline_ms", self.queue_deadline_ms),
            ("policy.fair_quantum_tokens", self.fair_quantum_tokens),
            (
                "policy.limits_redis_timeout_ms",
                self.limits_redis_timeout_ms,
            ),
        ] {
            if v == 0 {
                return Err(invalid(f, v, "must be at least 1"));
            }
        }
        let bw = self.shared_store_bandwidth_bytes_per_s;
        if !(bw.is_finite() && bw >= 0.0) {
            return Err(invalid(
                "policy.shared_store_bandwidth_bytes_per_s",
                bw,
                "must be a finite number of bytes/s, 0 or more (0: as the workers measure)",
            ));
        }
        let w = self.work_weight;
        if !(w.is_finite() && w >= 0.0) {
            return Err(invalid(
                "policy.work_weight",
                w,
                "must be a finite number, 0 or more (0: predicted TTFT alone)",
            ));
        }
        if !self.limits_redis.is_empty() && !self.limits_redis_nodes.is_empty() {
            return Err(invalid(
                "policy.limits_redis_nodes",
                format!("{:?}", self.limits_redis_nodes),
                "set either policy.limits_redis (one server) or policy.limits_redis_nodes (a cluster), not both",
            ));
        }
        let urls = std::iter::once(("policy.limits_redis", &self.limits_redis))
            .filter(|(_, u)| !u.is_empty())
            .chain(
                self.limits_redis_nodes
                    .iter()
                    .map(|u| ("policy.limits_redis_nodes", u)),
            );
        for (field, url) in urls {
            use redis::IntoConnectionInfo;
            if let Err(e) = url.as_str().into_connection_info() {
                return Err(invalid(
                    field,
                    format!("{url:?}"),
                    format!("not a Redis URL: {e}"),
                ));
            }
        }
        Ok(())
    }

    /// The default queue deadline.
    pub fn queue_deadline(&self) -> Duration {
        Duration::from_millis(self.queue_deadline_ms)
    }
}
