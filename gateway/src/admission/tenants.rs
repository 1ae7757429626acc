//! The tenants of the live config: API key hashes to tenants, each with its
//! policy and limit state ([`cake_policy::TenantLimiter`]). A reload keeps
//! the limit state of a tenant whose limits did not change, so a reload
//! neither refills buckets nor forgets requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cake_policy::{Refusal, TenantLimiter, TenantPolicy};

use super::sha256;
use crate::config::TenantConfig;

/// One tenant: its policy and its limits' state.
#[derive(Debug)]
pub struct TenantEntry {
    pub policy: TenantPolicy,
    limiter: Arc<Mutex<TenantLimiter>>,
}

impl TenantEntry {
    fn new(policy: TenantPolicy) -> TenantEntry {
        let limiter = Arc::new(Mutex::new(TenantLimiter::new(policy.limits)));
        TenantEntry { policy, limiter }
    }

    /// Checks the tenant's limits for a prompt of `prompt_tokens`; admitted,
    /// the returned permit holds one concurrency slot until dropped.
    pub fn admit(&self, now: Instant, prompt_tokens: u64) -> Result<TenantPermit, Refusal> {
        let mut l = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        l.check(now, prompt_tokens)?;
        Ok(TenantPermit {
            limiter: self.limiter.clone(),
        })
    }
}

/// A tenant's concurrency slot; given back when dropped (the response's
/// end, an error, or the client leaving).
pub struct TenantPermit {
    limiter: Arc<Mutex<TenantLimiter>>,
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        self.limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release();
    }
}

/// Who may call.
#[derive(Debug, Default)]
pub struct Tenants {
    by_key: HashMap<String, Arc<TenantEntry>>,
    by_name: HashMap<String, Arc<TenantEntry>>,
}

impl Tenants {
    /// From `[[tenants]]` (already validated), keeping `old`'s limit state
    /// for tenants whose limits are unchanged.
    pub fn new(cfg: &[TenantConfig], old: Option<&Tenants>) -> Tenants {
        let mut t = Tenants::default();
        for c in cfg {
            let policy = c.policy();
            let prev = old.and_then(|o| o.by_name.get(&policy.name));
            let entry = match prev {
                Some(p) if p.policy.limits == policy.limits => Arc::new(TenantEntry {
                    policy,
                    limiter: p.limiter.clone(),
                }),
                _ => Arc::new(TenantEntry::new(policy)),
            };
            for h in &c.api_key_sha256 {
                t.by_key.insert(h.to_ascii_lowercase(), entry.clone());
            }
            t.by_name.insert(c.name.clone(), entry);
        }
        t
    }

    /// With no tenants configured, everyone is the `default` tenant.
    pub fn is_open(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The tenant whose key this is.
    pub fn by_key(&self, key: &str) -> Option<Arc<TenantEntry>> {
        self.by_key.get(&sha256::hex(key.as_bytes())).cloned()
    }
}
