//! Tenant rate limits shared through Redis (`policy.limits_redis`), so
//! that they hold across every gateway replica pointing at the same Redis.
//!
//! Each of a tenant's rate limits (requests per second, prompt tokens per
//! minute) is a token bucket stored as a hash `{tokens, ts}` under
//! `PREFIX{TENANT}:LIMIT` (the braces are a hash tag: on a Redis Cluster,
//! `policy.limits_redis_nodes`, a tenant's buckets share a slot, so the
//! script over them runs on one master). One check is one atomic Lua script over all
//! of the request's buckets, with the same semantics as
//! [`cake_policy::TokenBucket`]: it refills by Redis's own clock (`TIME`,
//! so replicas with skewed clocks agree), consumes only when every bucket
//! passes, lets a request larger than a bucket through when the bucket is
//! full (leaving it in debt), and otherwise answers the real wait until
//! enough tokens are back. A bucket's key expires when it would be full
//! again, so idle tenants leave nothing behind.
//!
//! Redis down, slow (past `policy.limits_redis_timeout_ms`) or failing is
//! never an error for a request: the caller falls back to the gateway's
//! own limiter. Failures are counted in `cake_limits_redis_errors_total`,
//! logged at most once a minute, and for [`RETRY_EVERY`] after one Redis
//! is not asked at all, so requests do not each wait out a timeout.
//!
//! A check is awaited for at most the timeout. The Redis calls run on a
//! thread of their own, with a current-thread runtime and one reconnecting
//! [`ConnectionManager`] (or one cluster connection, made on first use),
//! answering through a oneshot channel, so no caller's runtime ever blocks
//! on Redis. The script is run by hash (`EVALSHA`), and sent whole
//! (`EVAL`, which caches it there) to a server that does not know it yet:
//! a restarted server, a promoted replica.

use parking_lot::Mutex;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use cake_engine::kv::DownWindow;
use cake_policy::{LimitKind, Limited, TenantLimits};
use redis::aio::{ConnectionLike, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::{RedisResult, ServerErrorKind};
use tokio::sync::mpsc;

use crate::config::PolicyConfig;

/// After a failure, Redis is not asked again for this long.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Redis being unreachable is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The token buckets of one request. KEYS[i] is a bucket; ARGV[3i-2..3i]
/// are its capacity, refill rate per second and the request's cost.
/// Returns `{0, 0}` when admitted (every bucket charged), else `{i, wait}`:
/// the bucket needing the longest wait and that wait in microseconds.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local level = {}
local worst, wait = 0, 0
for i = 1, #KEYS do
  local cap = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local h = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens, ts = tonumber(h[1]), tonumber(h[2])
  if tokens == nil or ts == nil then
    tokens, ts = cap, now
  elseif now > ts then
    tokens = tokens + (now - ts) * rate / 1000000
    ts = now
  end
  if tokens > cap then tokens = cap end
  level[i] = {tokens, ts}
  local need = math.min(cost, cap)
  if tokens < need then
    local w = math.ceil((need - tokens) * 1000000 / rate)
    if w < 1 then w = 1 end
    if w > wait then worst, wait = i, w end
  end
end
if worst > 0 then return {worst, wait} end
for i = 1, #KEYS do
  local cap = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local left = level[i][1] - tonumber(ARGV[3 * i])
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', left),
    'ts', string.format('%.0f', level[i][2]))
  redis.call('PEXPIRE', KEYS[i], string.format('%.0f', math.ceil((cap - left) * 1000 / rate) + 1000))
end
return {0, 0}
"#;

/// One token bucket of a request, as the script sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub limit: LimitKind,
    pub capacity: f64,
    pub rate: f64,
    pub cost: u64,
}

/// The rate buckets a request of `prompt_tokens` is checked against, the
/// same as [`cake_policy::TenantLimiter`]'s: requests per second bursting
/// up to the rate (at least 1), prompt tokens per minute bursting up to a
/// minute's worth.
pub fn buckets(limits: &TenantLimits, prompt_tokens: u64) -> Vec<Bucket> {
    let mut b = Vec::with_capacity(2);
    if let Some(n) = limits.requests_per_s.filter(|n| n.is_finite() && *n > 0.0) {
        b.push(Bucket {
            limit: LimitKind::RequestsPerSecond,
            capacity: n.max(1.0),
            rate: n,
            cost: 1,
        });
    }
    if let Some(n) = limits.prompt_tokens_per_min.filter(|n| *n > 0) {
        b.push(Bucket {
            limit: LimitKind::PromptTokensPerMinute,
            capacity: n as f64,
            rate: n as f64 / 60.0,
            cost: prompt_tokens,
        });
    }
    b
}

/// Why Redis did not decide.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SharedError {
    #[error("redis limits skipped after a recent failure")]
    Skipped,
    #[error("redis limits did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis limits: {0}")]
    Redis(String),
}

struct Job {
    keys: Vec<String>,
    args: Vec<String>,
    reply: tokio::sync::oneshot::Sender<RedisResult<Vec<i64>>>,
}

/// Where the limits live.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One server, `policy.limits_redis`.
    Server(String),
    /// A Redis Cluster's seed nodes, `policy.limits_redis_nodes`.
    Cluster(Vec<String>),
}

impl Target {
    /// From the policy; `None` when neither key is set.
    pub fn from_policy(policy: &PolicyConfig) -> Option<Target> {
        if !policy.limits_redis_nodes.is_empty() {
            Some(Target::Cluster(policy.limits_redis_nodes.clone()))
        } else if !policy.limits_redis.is_empty() {
            Some(Target::Server(policy.limits_redis.clone()))
        } else {
            None
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Without passwords: this goes to logs.
        let host = |u: &str| {
            u.rsplit_once('@')
                .map_or(u.to_string(), |(_, h)| h.to_string())
        };
        match self {
            Target::Server(u) => write!(f, "{}", host(u)),
            Target::Cluster(n) => {
                let n: Vec<String> = n.iter().map(|u| host(u)).collect();
                write!(f, "cluster {}", n.join(","))
            }
        }
    }
}

/// The connection to the limits' Redis; see the module docs.
pub struct SharedLimits {
    target: Target,
    prefix: String,
    timeout: Duration,
    jobs: mpsc::UnboundedSender<Job>,
    /// Down for [`RETRY_EVERY`] after a failure.
    down: DownWindow,
    /// When "unreachable" was last logged (at most every [`LOG_EVERY`]).
    last_log: Mutex<Option<Instant>>,
}

impl fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedLimits")
            .field("target", &self.target.to_string())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SharedLimits {
    /// Connects lazily (Redis down at start is not an error). `None` when
    /// neither `policy.limits_redis` nor `policy.limits_redis_nodes` is set.
    pub fn from_policy(policy: &PolicyConfig) -> Option<Arc<SharedLimits>> {
        let target = Target::from_policy(policy)?;
        let timeout = Duration::from_millis(policy.limits_redis_timeout_ms.max(1));
        match SharedLimits::new(target, &policy.limits_redis_prefix, timeout) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::warn!(error = %e, "policy.limits_redis unusable; tenant limits stay per gateway");
                None
            }
        }
    }

    /// `old` when it was made from the same settings, else a new one.
    pub fn reuse_or_new(
        policy: &PolicyConfig,
        old: Option<&Arc<SharedLimits>>,
    ) -> Option<Arc<SharedLimits>> {
        match old {
            Some(o)
                if Some(&o.target) == Target::from_policy(policy).as_ref()
                    && o.prefix == policy.limits_redis_prefix
                    && o.timeout.as_millis()
                        == u128::from(policy.limits_redis_timeout_ms.max(1)) =>
            {
                Some(o.clone())
            }
            _ => SharedLimits::from_policy(policy),
        }
    }

    pub fn new(
        target: Target,
        prefix: &str,
        timeout: Duration,
    ) -> Result<SharedLimits, SharedError> {
        let bad = |e: redis::RedisError| SharedError::Redis(e.to_string());
        let client = match &target {
            Target::Server(url) => Client::Server(redis::Client::open(url.as_str()).map_err(bad)?),
            Target::Cluster(nodes) => Client::Cluster(Box::new(
                ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .min_retry_wait(10)
                    .max_retry_wait(RETRY_EVERY.as_millis() as u64)
                    .build()
                    .map_err(bad)?,
            )),
        };
        metrics::describe_counter!(
            "cake_limits_redis_errors_total",
            "Tenant limit checks Redis did not answer (the gateway's own limits decided)"
        );
        let (jobs, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("cake-limits-redis".into())
            .spawn(move || serve(client, timeout, rx))
            .map_err(|e| SharedError::Redis(format!("cannot start its thread: {e}")))?;
        Ok(SharedLimits {
            target,
            prefix: prefix.to_string(),
            timeout,
            jobs,
            down: DownWindow::new(),
            last_log: Mutex::new(None),
        })
    }

    /// The Redis key of `tenant`'s bucket for `limit`: `{tenant}` is the
    /// hash tag every bucket of the tenant shares.
    pub fn key(&self, tenant: &str, limit: LimitKind) -> String {
        format!("{}{{{tenant}}}:{}", self.prefix, limit.as_str())
    }

    /// Checks (and, all passing, charges) `buckets` of `tenant` in Redis:
    /// `Ok(Ok(()))` admitted, `Ok(Err(_))` refused with the limit needing
    /// the longest wait, `Err(_)` Redis did not decide (the caller's own
    /// limits must). Waits for at most the timeout.
    pub async fn check(
        &self,
        tenant: &str,
        buckets: &[Bucket],
    ) -> Result<Result<(), Limited>, SharedError> {
        if buckets.is_empty() {
            return Ok(Ok(()));
        }
        if self.down.is_down(RETRY_EVERY) {
            return Err(SharedError::Skipped);
        }
        let result = self.call(tenant, buckets).await;
        match result {
            Ok(v) => {
                if self.down.succeeded() {
                    tracing::info!(redis = %self.target, "redis for tenant limits reachable again");
                }
                Ok(decode(&v, buckets))
            }
            Err(e) => {
                metrics::counter!("cake_limits_redis_errors_total").increment(1);
                self.down.failed();
                let now = Instant::now();
                let mut last_log = self.last_log.lock();
                if last_log.is_none_or(|l| now.duration_since(l) >= LOG_EVERY) {
                    *last_log = Some(now);
                    tracing::warn!(
                        redis = %self.target,
                        error = %e,
                        "redis for tenant limits unreachable; each gateway enforces them alone until it is back"
                    );
                }
                Err(e)
            }
        }
    }

    async fn call(&self, tenant: &str, buckets: &[Bucket]) -> Result<Vec<i64>, SharedError> {
        let keys = buckets.iter().map(|b| self.key(tenant, b.limit)).collect();
        let args = buckets
            .iter()
            .flat_map(|b| {
                [
                    b.capacity.to_string(),
                    b.rate.to_string(),
                    b.cost.to_string(),
                ]
            })
            .collect();
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job { keys, args, reply })
            .map_err(|_| SharedError::Redis("its thread has stopped".into()))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(SharedError::Redis(e.to_string())),
            Ok(Err(_)) => Err(SharedError::Redis("no answer".into())),
            Err(_) => Err(SharedError::Timeout(self.timeout)),
        }
    }
}

/// The script's `{i, wait_us}` as a verdict.
fn decode(v: &[i64], buckets: &[Bucket]) -> Result<(), Limited> {
    let i = v.first().copied().unwrap_or(0);
    if i <= 0 {
        return Ok(());
    }
    let limit = buckets
        .get(i as usize - 1)
        .map_or(LimitKind::RequestsPerSecond, |b| b.limit);
    let us = v.get(1).copied().unwrap_or(1).max(1) as u64;
    Err(Limited {
        limit,
        retry_after: Duration::from_micros(us),
    })
}

/// How the Redis thread reaches the limits.
enum Client {
    Server(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// The Redis thread: runs each job as a task on its own runtime until
/// every [`SharedLimits`] handle is gone.
fn serve(client: Client, timeout: Duration, mut rx: mpsc::UnboundedReceiver<Job>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "no runtime for the tenant limits' redis");
            return;
        }
    };
    rt.block_on(async move {
        match client {
            Client::Server(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(RETRY_EVERY);
                match client.get_connection_manager_lazy(cfg) {
                    Ok(conn) => {
                        while let Some(job) = rx.recv().await {
                            spawn_job(conn.clone(), timeout, job);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no connection to the tenant limits' redis")
                    }
                }
            }
            Client::Cluster(client) => {
                // Made on the first job, and again after a failed attempt
                // (at most every RETRY_EVERY); jobs meanwhile fail fast.
                let mut conn = None;
                let mut tried: Option<Instant> = None;
                while let Some(job) = rx.recv().await {
                    if conn.is_none() && tried.is_none_or(|t| t.elapsed() >= RETRY_EVERY) {
                        tried = Some(Instant::now());
                        match tokio::time::timeout(timeout, client.get_async_connection()).await {
                            Ok(Ok(c)) => conn = Some(c),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "tenant limits' redis cluster: no connection")
                            }
                            Err(_) => tracing::debug!("tenant limits' redis cluster: connecting timed out"),
                        }
                    }
                    match &conn {
                        Some(c) => spawn_job(c.clone(), timeout, job),
                        None => {
                            let _ = job.reply.send(Err(redis::RedisError::from((
                                redis::ErrorKind::Io,
                                "no connection to the redis cluster",
                            ))));
                        }
                    }
                }
            }
        }
    });
}

/// Runs one job on `conn` under the timeout, answering its caller.
fn spawn_job<C: ConnectionLike + Send + 'static>(mut conn: C, timeout: Duration, job: Job) {
    tokio::spawn(async move {
        let r = tokio::time::timeout(timeout, eval(&mut conn, &job))
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out",
                )))
            });
        let _ = job.reply.send(r);
    });
}

/// The script's SHA-1, as `EVALSHA` names it.
fn script_sha() -> &'static str {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| redis::Script::new(SCRIPT).get_hash().to_string())
}

/// `EVALSHA`, or `EVAL` with the whole script where the server does not
/// know it yet (first use, a restarted server, a promoted replica). Both
/// are routed by the first key on a cluster.
async fn eval<C: ConnectionLike>(conn: &mut C, job: &Job) -> RedisResult<Vec<i64>> {
    let run = |cmd: &str, script: &str| {
        let mut c = redis::cmd(cmd);
        c.arg(script)
            .arg(job.keys.len())
            .arg(&job.keys)
            .arg(&job.args);
        c
    };
    match run("EVALSHA", script_sha()).query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
            run("EVAL", SCRIPT).query_async(conn).await
        }
        r => r,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use cake_engine::kv::LocalRedis;

    fn redis() -> Option<LocalRedis> {
        let required = std::env::var("CAKE_REQUIRE_REDIS").is_ok_and(|v| v == "1");
        match LocalRedis::start(&[]) {
            Ok(r) => Some(r),
            Err(e) if !required => {
                eprintln!("skipping: no usable redis-server ({e})");
                None
            }
            Err(e) => panic!("CAKE_REQUIRE_REDIS=1 but redis-server cannot start: {e}"),
        }
    }

    fn limits(server: &LocalRedis) -> SharedLimits {
        // Generous: a debug build on a busy machine.
        SharedLimits::new(
            Target::Server(server.url()),
            "test:limits:",
            Duration::from_millis(500),
        )
        .unwrap()
    }

    fn rps(n: f64) -> Bucket {
        buckets(
            &TenantLimits {
                requests_per_s: Some(n),
                ..TenantLimits::default()
            },
            1,
        )[0]
    }

    fn tokens_per_min(n: u64, cost: u64) -> Bucket {
        buckets(
            &TenantLimits {
                prompt_tokens_per_min: Some(n),
                ..TenantLimits::default()
            },
            cost,
        )[0]
    }

    #[tokio::test]
    async fn bucket_refills_over_time_and_refusals_cost_nothing() {
        let Some(server) = redis() else { return };
        let l = limits(&server);
        // 10/s, burst 10.
        let b = [rps(10.0)];
        for _ in 0..10 {
            assert_eq!(l.check("t", &b).await, Ok(Ok(())));
        }
        let wait = l.check("t", &b).await.unwrap().unwrap_err();
        assert_eq!(wait.limit, LimitKind::RequestsPerSecond);
        assert!(
            wait.retry_after > Duration::ZERO && wait.retry_after <= Duration::from_millis(100),
            "{wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(l.check("t", &b).await, Ok(Ok(())));
        // Another tenant has its own bucket.
        assert_eq!(l.check("u", &b).await, Ok(Ok(())));

        // Both limits: the token bucket refuses, the request bucket is not
        // charged either.
        let both = |cost| [rps(1.0), tokens_per_min(600, cost)];
        assert_eq!(l.check("v", &both(600)).await, Ok(Ok(())));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let r = l.check("v", &both(600)).await.unwrap().unwrap_err();
        assert_eq!(r.limit, LimitKind::PromptTokensPerMinute);
        assert!(r.retry_after > Duration::from_secs(50), "{r:?}");
        // The request token is still there for a small prompt.
        assert_eq!(l.check("v", &both(5)).await, Ok(Ok(())));

        // Bigger than the bucket: passes when full and leaves debt.
        assert_eq!(l.check("w", &[tokens_per_min(60, 120)]).await, Ok(Ok(())));
        let r = l
            .check("w", &[tokens_per_min(60, 1)])
            .await
            .unwrap()
            .unwrap_err();
        // 60 of debt plus 1 at 1/s.
        assert!(
            r.retry_after > Duration::from_secs(60) && r.retry_after <= Duration::from_secs(61),
            "{r:?}"
        );

        // Keys expire once the bucket would be full again.
        let mut c = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(l.key("t", LimitKind::RequestsPerSecond))
            .query(&mut c)
            .unwrap();
        assert!(ttl > 0 && ttl <= 1_200, "{ttl}");
    }

    #[tokio::test]
    async fn redis_down_is_an_error_quickly_and_then_skipped() {
        let Some(mut server) = redis() else { return };
        let l = limits(&server);
        assert_eq!(l.check("t", &[rps(1.0)]).await, Ok(Ok(())));
        server.kill();
        // A refused connection is an error at once; then the down window
        // skips Redis without trying it (no clock needed to see that).
        assert!(l.check("t", &[rps(1.0)]).await.is_err());
        assert_eq!(l.check("t", &[rps(1.0)]).await, Err(SharedError::Skipped));
    }
}
