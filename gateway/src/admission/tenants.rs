//! The tenants of the live config: API key hashes to tenants, each with its
//! policy and limit state ([`cake_policy::TenantLimiter`]). A reload keeps
//! the limit state of a tenant whose limits did not change, so a reload
//! neither refills buckets nor forgets requests in flight.
//!
//! With `policy.limits_redis` set, the rate limits (requests per second,
//! prompt tokens per minute) are checked in Redis, shared by every gateway
//! pointing at it ([`SharedLimits`]); the length and concurrency limits
//! stay here, per gateway. Redis not answering, the gateway's own rate
//! limiter decides instead (fail open, never a failed request).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

use cake_policy::{Refusal, TenantLimiter, TenantPolicy};

use super::limits_redis::{SharedLimits, buckets};
use super::sha256;
use crate::config::TenantConfig;

/// One tenant: its policy and its limits' state.
#[derive(Debug)]
pub struct TenantEntry {
    pub policy: TenantPolicy,
    /// Every limit; with [`Shared`] rates, the length and concurrency
    /// limits only.
    limiter: Arc<Mutex<TenantLimiter>>,
    shared: Option<Shared>,
}

/// Rate limits kept in Redis, with the local stand-in used while Redis
/// does not answer.
#[derive(Debug, Clone)]
struct Shared {
    redis: Arc<SharedLimits>,
    fallback: Arc<Mutex<TenantLimiter>>,
}

impl TenantEntry {
    fn new(policy: TenantPolicy, redis: Option<&Arc<SharedLimits>>) -> TenantEntry {
        let l = policy.limits;
        let has_rates = l.requests_per_s.is_some() || l.prompt_tokens_per_min.is_some();
        let (limiter, shared) = match redis {
            Some(r) if has_rates => (
                cake_policy::TenantLimits {
                    requests_per_s: None,
                    prompt_tokens_per_min: None,
                    ..l
                },
                Some(Shared {
                    redis: r.clone(),
                    fallback: Arc::new(Mutex::new(TenantLimiter::new(cake_policy::TenantLimits {
                        max_concurrent: None,
                        max_prompt_tokens: None,
                        ..l
                    }))),
                }),
            ),
            _ => (l, None),
        };
        TenantEntry {
            policy,
            limiter: Arc::new(Mutex::new(TenantLimiter::new(limiter))),
            shared,
        }
    }

    /// Checks the tenant's limits for a prompt of `prompt_tokens`; admitted,
    /// the returned permit holds one concurrency slot until dropped. With
    /// shared rate limits this awaits Redis, at most
    /// `policy.limits_redis_timeout_ms`.
    pub async fn admit(&self, now: Instant, prompt_tokens: u64) -> Result<TenantPermit, Refusal> {
        self.limiter.lock().check(now.into_std(), prompt_tokens)?;
        // From here a refusal drops the permit, giving the slot back.
        let permit = TenantPermit {
            limiter: self.limiter.clone(),
        };
        let Some(s) = &self.shared else {
            return Ok(permit);
        };
        let b = buckets(&self.policy.limits, prompt_tokens);
        match s.redis.check(&self.policy.name, &b).await {
            Ok(Ok(())) => Ok(permit),
            Ok(Err(limited)) => Err(limited.into()),
            Err(_) => {
                let mut f = s.fallback.lock();
                f.check(now.into_std(), prompt_tokens)?;
                // The stand-in counts no concurrency.
                f.release();
                Ok(permit)
            }
        }
    }

    /// Whether `self`'s limit state can serve `policy` under `redis`.
    fn keeps(&self, policy: &TenantPolicy, redis: Option<&Arc<SharedLimits>>) -> bool {
        let has_rates =
            policy.limits.requests_per_s.is_some() || policy.limits.prompt_tokens_per_min.is_some();
        let same_redis = match (&self.shared, redis) {
            (Some(s), Some(r)) => Arc::ptr_eq(&s.redis, r),
            (None, Some(_)) => !has_rates,
            (Some(_), None) => false,
            (None, None) => true,
        };
        self.policy.limits == policy.limits && same_redis
    }
}

/// A tenant's concurrency slot; given back when dropped (the response's
/// end, an error, or the client leaving).
pub struct TenantPermit {
    limiter: Arc<Mutex<TenantLimiter>>,
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        self.limiter.lock().release();
    }
}

/// Who may call.
#[derive(Debug, Default)]
pub struct Tenants {
    by_key: HashMap<String, Arc<TenantEntry>>,
    by_name: HashMap<String, Arc<TenantEntry>>,
    redis: Option<Arc<SharedLimits>>,
}

impl Tenants {
    /// From `[[tenants]]` (already validated), keeping `old`'s limit state
    /// for tenants whose limits are unchanged; rate limits in `redis` when
    /// given.
    pub fn new(
        cfg: &[TenantConfig],
        redis: Option<Arc<SharedLimits>>,
        old: Option<&Tenants>,
    ) -> Tenants {
        let mut t = Tenants {
            redis,
            ..Tenants::default()
        };
        for c in cfg {
            let policy = c.policy();
            let prev = old.and_then(|o| o.by_name.get(&policy.name));
            let entry = match prev {
                Some(p) if p.keeps(&policy, t.redis.as_ref()) => Arc::new(TenantEntry {
                    policy,
                    limiter: p.limiter.clone(),
                    shared: p.shared.clone(),
                }),
                _ => Arc::new(TenantEntry::new(policy, t.redis.as_ref())),
            };
            for h in &c.api_key_sha256 {
                t.by_key.insert(h.to_ascii_lowercase(), entry.clone());
            }
            t.by_name.insert(c.name.clone(), entry);
        }
        t
    }

    /// Where the rate limits are shared, if anywhere.
    pub fn shared_limits(&self) -> Option<&Arc<SharedLimits>> {
        self.redis.as_ref()
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
