//! How the `redis` tier talks to Redis: one server through a reconnecting
//! connection manager, or a Redis Cluster through the `redis` crate's
//! cluster client.
//!
//! Either way a batch of single-key commands (a prompt's `EXISTS`, its
//! `GET`s) costs one pipelined round trip per server: on a cluster the keys
//! are grouped by the master that owns their hash slot, from a copy of the
//! cluster's slot map, and the groups run at once. A command a server
//! answers with `MOVED`/`ASK` (the slot moved since the copy was taken) is
//! sent again alone through the cluster client, which follows the
//! redirect, and the copy is refreshed. A server that fails or times out
//! turns its commands into errors (the store makes them misses, or drops
//! the write) and for `retry_after` is not asked at all, so requests do
//! not each wait out a timeout; the other masters keep serving. While a
//! server counts as down the slot map is refreshed at most every
//! [`REFRESH_EVERY`], so once a replica has taken over its slots go there;
//! otherwise every [`REFRESH_AT_LEAST`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ErrorKind, RedisResult, ServerErrorKind, Value};
use tokio::time::Instant;

use super::config::RedisConfig;
use super::down_window::DownWindow;
use super::store::{Counters, StoreError};

/// The slot map is refreshed at most this often while something is wrong.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// ... and at least this often: the cluster client follows a redirection
/// inside a pipeline by itself, so a moved slot is not always seen.
pub const REFRESH_AT_LEAST: Duration = Duration::from_secs(1);

/// One server's reachability: down since its last failure, for
/// `retry_after`.
pub(super) struct Health {
    label: String,
    down: DownWindow,
}

impl Health {
    fn new(label: impl Into<String>) -> Health {
        Health {
            label: label.into(),
            down: DownWindow::new(),
        }
    }

    /// `f` under the timeout, unless the server failed less than
    /// `retry_after` ago. Logs the first failure of an outage and the
    /// recovery; counts every failure.
    async fn call<T>(
        &self,
        link: &Link,
        what: &'static str,
        f: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        if self.down.is_down(link.retry_after) {
            return Err(StoreError::Unavailable(link.retry_after));
        }
        let err = match tokio::time::timeout(link.timeout, f).await {
            Ok(Ok(v)) => {
                if self.down.succeeded() {
                    tracing::info!(server = %self.label, op = what, "redis KV store reachable again");
                }
                return Ok(v);
            }
            // A redirection or a refusal is the server answering: not an
            // outage.
            Ok(Err(e)) if !outage(&e) => return Err(StoreError::Redis(e)),
            Ok(Err(e)) => StoreError::Redis(e),
            Err(_) => StoreError::Timeout(link.timeout),
        };
        link.counters.error();
        if self.down.failed() {
            tracing::warn!(
                server = %self.label,
                op = what,
                error = %err,
                retry_after_ms = link.retry_after.as_millis() as u64,
                "redis KV store unreachable; its chunks are misses until it is back"
            );
        } else {
            tracing::debug!(server = %self.label, op = what, error = %err, "redis KV store still unreachable");
        }
        Err(err)
    }
}

/// What every call shares: the timeouts and the store's counters.
pub(super) struct Link {
    pub timeout: Duration,
    pub retry_after: Duration,
    pub counters: Counters,
}

/// One Redis or a cluster; see the module docs.
pub(super) enum Backend {
    Single {
        conn: ConnectionManager,
        health: Health,
    },
    Cluster(Box<Cluster>),
}

impl Backend {
    /// Connects lazily: nothing reachable at start is not an error.
    pub fn new(cfg: &RedisConfig) -> Result<Backend, StoreError> {
        if !cfg.nodes.is_empty() {
            return Ok(Backend::Cluster(Box::new(Cluster::new(cfg)?)));
        }
        let client = redis::Client::open(cfg.url.as_str())?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(cfg.timeout_ms)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(cfg.retry_after_ms.max(20)));
        Ok(Backend::Single {
            conn: client.get_connection_manager_lazy(manager_cfg)?,
            health: Health::new(redact(&cfg.url)),
        })
    }

    /// Runs single-key commands (`keys[i]` is `cmds[i]`'s key) and answers
    /// one result per command, in order: one pipelined round trip per
    /// server.
    pub async fn run(
        &self,
        link: &Link,
        what: &'static str,
        cmds: Vec<Cmd>,
        keys: &[String],
    ) -> Vec<Result<Value, StoreError>> {
        debug_assert_eq!(cmds.len(), keys.len());
        if cmds.is_empty() {
            return Vec::new();
        }
        match self {
            Backend::Single { conn, health } => {
                let n = cmds.len();
                let mut pipe = redis::pipe();
                cmds.into_iter().for_each(|c| {
                    pipe.add_command(c);
                });
                let mut conn = conn.clone();
                match health
                    .call(link, what, pipe.query_async::<Vec<Value>>(&mut conn))
                    .await
                {
                    Ok(values) if values.len() == n => values.into_iter().map(in_band).collect(),
                    Ok(_) => (0..n)
                        .map(|_| Err(StoreError::Timeout(link.timeout)))
                        .collect(),
                    Err(e) => spread(&e, n),
                }
            }
            Backend::Cluster(c) => c.run(link, what, cmds, keys).await,
        }
    }

    /// The master serving `key` in the current slot map (`None` for one
    /// server or before the first call).
    pub fn master_of(&self, key: &str) -> Option<String> {
        match self {
            Backend::Single { .. } => None,
            Backend::Cluster(c) => {
                let s = c.slots.lock();
                s.find(slot_of(key.as_bytes())).map(|i| s.ranges[i].addr())
            }
        }
    }
}

/// Whether `e` means the server could not be reached or did not answer
/// (rather than answering with an error).
fn outage(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound | ErrorKind::Server(ServerErrorKind::ClusterDown)
        )
}

/// Whether the cluster told us to ask elsewhere, or later (the slot moved,
/// is moving, or its master is being replaced).
fn redirected(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain
            )
    )
}

/// A server's error reply to one command of a pipeline, as an error.
fn in_band(v: Value) -> Result<Value, StoreError> {
    match v {
        Value::ServerError(e) => Err(StoreError::Redis(e.into())),
        v => Ok(v),
    }
}

/// The same failure for each of `n` commands.
fn spread(e: &StoreError, n: usize) -> Vec<Result<Value, StoreError>> {
    (0..n)
        .map(|_| {
            Err(match e {
                StoreError::Timeout(d) => StoreError::Timeout(*d),
                StoreError::Unavailable(d) => StoreError::Unavailable(*d),
                other => StoreError::Redis(redis::RedisError::from((
                    ErrorKind::Io,
                    "redis call failed",
                    other.to_string(),
                ))),
            })
        })
        .collect()
}

/// A URL without its password, for logs.
fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_user, host)) => match scheme_user.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***@{host}"),
            None => format!("***@{host}"),
        },
        None => url.to_string(),
    }
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (the text
/// between the first `{` and the next `}`, when not empty) or of the whole
/// key, modulo 16384, as Redis Cluster computes it.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

/// One slot range and the master that serves it.
#[derive(Debug, Clone, PartialEq)]
struct Range {
    start: u16,
    end: u16,
    host: String,
    port: u16,
}

impl Range {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Our copy of the cluster's slot map.
#[derive(Default)]
struct SlotMap {
    /// Sorted by `start`, not overlapping.
    ranges: Vec<Range>,
    /// Refresh before the next use.
    stale: bool,
    refreshed: Option<Instant>,
}

impl SlotMap {
    /// The index of the range serving `slot`.
    fn find(&self, slot: u16) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.start <= slot);
        (i > 0 && self.ranges[i - 1].end >= slot).then(|| i - 1)
    }
}

/// The reply of `CLUSTER SLOTS` as ranges: `[start, end, [host, port, id],
/// replicas...]` per range; ranges whose master announces no host are left
/// out (their keys go through the cluster client one by one).
fn parse_slots(v: &Value) -> Vec<Range> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let mut ranges: Vec<Range> = items
        .iter()
        .filter_map(|item| {
            let Value::Array(f) = item else { return None };
            let int = |v: &Value| match v {
                Value::Int(n) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (start, end) = (int(f.first()?)?, int(f.get(1)?)?);
            let Value::Array(master) = f.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let port = int(master.get(1)?)?;
            (!host.is_empty() && start <= end).then_some(Range {
                start,
                end,
                host,
                port,
            })
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    ranges
}

/// A `CLUSTER SLOTS` reply as `(first slot, last slot, master port)`, for
/// the local test cluster.
#[cfg(any(feature = "test-support", feature = "tools"))]
pub(super) fn slot_ranges(v: &Value) -> Vec<(u16, u16, u16)> {
    parse_slots(v)
        .into_iter()
        .map(|r| (r.start, r.end, r.port))
        .collect()
}

/// A Redis Cluster; see the module docs.
pub(super) struct Cluster {
    client: ClusterClient,
    seeds: String,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    /// Connecting (the client needs one seed node to answer).
    connect: Health,
    slots: Mutex<SlotMap>,
    /// Per master address.
    nodes: Mutex<HashMap<String, Arc<Health>>>,
}

impl Cluster {
    fn new(cfg: &RedisConfig) -> Result<Cluster, StoreError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let client = ClusterClientBuilder::new(cfg.nodes.iter().map(String::as_str))
            .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .response_timeout(timeout)
            .retries(1)
            .min_retry_wait(10)
            .max_retry_wait(cfg.retry_after_ms.max(20))
            .build()?;
        let seeds = cfg
            .nodes
            .iter()
            .map(|n| redact(n))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cluster {
            client,
            connect: Health::new(format!("cluster {seeds}")),
            seeds,
            conn: tokio::sync::Mutex::new(None),
            slots: Mutex::new(SlotMap {
                stale: true,
                ..SlotMap::default()
            }),
            nodes: Mutex::new(HashMap::new()),
        })
    }

    /// The cluster connection, made on first use.
    async fn connection(&self, link: &Link) -> Result<ClusterConnection, StoreError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .connect
            .call(link, "connect", self.client.get_async_connection())
            .await?;
        tracing::info!(seeds = %self.seeds, "connected to the redis cluster for the KV store");
        *guard = Some(c.clone());
        Ok(c)
    }

    fn node(&self, addr: &str) -> Arc<Health> {
        self.nodes
            .lock()
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Health::new(addr)))
            .clone()
    }

    /// Marks the slot map for a refresh before its next use.
    fn stale(&self) {
        self.slots.lock().stale = true;
    }

    /// Refreshes the slot map when it is stale, at most every
    /// [`REFRESH_EVERY`]; a failure keeps the old map.
    async fn refresh(&self, link: &Link, conn: &mut ClusterConnection) {
        {
            let mut s = self.slots.lock();
            let age = s.refreshed.map(|t| t.elapsed());
            let due = match age {
                None => true,
                Some(a) => (s.stale && a >= REFRESH_EVERY) || a >= REFRESH_AT_LEAST,
            };
            if !due {
                return;
            }
            s.refreshed = Some(Instant::now());
        }
        // A random node may be the one that is down: ask up to three.
        for _ in 0..3 {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SLOTS");
            let r = tokio::time::timeout(
                link.timeout,
                conn.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random)),
            )
            .await;
            if let Ok(Ok(v)) = r {
                let ranges = parse_slots(&v);
                if !ranges.is_empty() {
                    let mut s = self.slots.lock();
                    if s.ranges != ranges {
                        tracing::debug!(ranges = ranges.len(), "redis cluster slot map changed");
                    }
                    s.ranges = ranges;
                    s.stale = false;
                    return;
                }
            }
        }
    }

    async fn run(
        &self,
        link: &Link,
        what: &'static str,
        cmds: Vec<Cmd>,
        keys: &[String],
    ) -> Vec<Result<Value, StoreError>> {
        let n = cmds.len();
        let mut conn = match self.connection(link).await {
            Ok(c) => c,
            Err(e) => return spread(&e, n),
        };
        self.refresh(link, &mut conn).await;

        // Group by master; keys whose slot the map does not know go alone.
        let mut groups: Vec<(Range, Vec<usize>)> = Vec::new();
        let mut alone: Vec<usize> = Vec::new();
        {
            let s = self.slots.lock();
            let mut by_range: HashMap<String, usize> = HashMap::new();
            for (i, key) in keys.iter().enumerate() {
                let slot = slot_of(key.as_bytes());
                match s.find(slot) {
                    Some(r) => {
                        let range = &s.ranges[r];
                        let g = *by_range.entry(range.addr()).or_insert_with(|| {
                            groups.push((range.clone(), Vec::new()));
                            groups.len() - 1
                        });
                        groups[g].1.push(i);
                    }
                    None => alone.push(i),
                }
            }
        }
        let mut cmds: Vec<Option<Cmd>> = cmds.into_iter().map(Some).collect();
        let mut out: Vec<Option<Result<Value, StoreError>>> = (0..n).map(|_| None).collect();

        let sends = groups.into_iter().map(|(range, idx)| {
            let mut pipe = redis::pipe();
            for &i in &idx {
                if let Some(c) = cmds[i].take() {
                    pipe.add_command(c);
                }
            }
            let health = self.node(&range.addr());
            let mut conn = conn.clone();
            async move {
                let route = SingleNodeRoutingInfo::ByAddress {
                    host: range.host.clone(),
                    port: range.port,
                };
                let count = idx.len();
                let r = health
                    .call(
                        link,
                        what,
                        conn.route_pipeline(pipe.clone(), 0, count, route),
                    )
                    .await;
                (idx, pipe, r)
            }
        });
        let mut retry: Vec<(usize, Cmd)> = Vec::new();
        for (idx, pipe, r) in join_all(sends).await {
            match r {
                Ok(values) if values.len() == idx.len() => {
                    for ((i, v), cmd) in idx.into_iter().zip(values).zip(pipe.cmd_iter()) {
                        match v {
                            Value::ServerError(e)
                                if matches!(
                                    e.kind(),
                                    Some(
                                        ServerErrorKind::Moved
                                            | ServerErrorKind::Ask
                                            | ServerErrorKind::TryAgain
                                    )
                                ) =>
                            {
                                self.stale();
                                retry.push((i, cmd.clone()));
                            }
                            v => out[i] = Some(in_band(v)),
                        }
                    }
                }
                Ok(_) => {
                    self.stale();
                    idx.into_iter()
                        .zip(pipe.cmd_iter())
                        .for_each(|(i, c)| retry.push((i, c.clone())));
                }
                Err(StoreError::Redis(e)) if redirected(&e) => {
                    // The slots moved, or the client has no connection to
                    // that master yet (a new one): let it route each
                    // command, following the redirections.
                    self.stale();
                    idx.into_iter()
                        .zip(pipe.cmd_iter())
                        .for_each(|(i, c)| retry.push((i, c.clone())));
                }
                Err(e) => {
                    // That master failed: its commands fail, the others
                    // stand; a replica may be taking over.
                    self.stale();
                    let each = spread(&e, idx.len());
                    for (i, r) in idx.into_iter().zip(each) {
                        out[i] = Some(r);
                    }
                }
            }
        }
        retry.extend(
            alone
                .into_iter()
                .filter_map(|i| cmds[i].take().map(|c| (i, c))),
        );
        let one_by_one = retry.into_iter().map(|(i, cmd)| {
            let mut conn = conn.clone();
            async move {
                let r =
                    match tokio::time::timeout(link.timeout, cmd.query_async::<Value>(&mut conn))
                        .await
                    {
                        Ok(Ok(v)) => in_band(v),
                        Ok(Err(e)) => {
                            link.counters.error();
                            Err(StoreError::Redis(e))
                        }
                        Err(_) => {
                            link.counters.error();
                            Err(StoreError::Timeout(link.timeout))
                        }
                    };
                (i, r)
            }
        });
        for (i, r) in join_all(one_by_one).await {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::Timeout(link.timeout))))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn cluster_slots_reply_becomes_sorted_ranges() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
            ]),
            // No announced host: left to the cluster client.
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("", 7002)]),
        ]);
        let map = SlotMap {
            ranges: parse_slots(&reply),
            ..SlotMap::default()
        };
        assert_eq!(map.ranges.len(), 2);
        assert_eq!(map.ranges[0].addr(), "127.0.0.1:7000");
        assert_eq!(map.find(0), Some(0));
        assert_eq!(map.find(5460), Some(0));
        assert_eq!(map.find(5461), Some(1));
        assert_eq!(map.find(10922), Some(1));
        assert_eq!(map.find(10923), None);
        assert!(parse_slots(&Value::Nil).is_empty());
    }

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"123456789"), 12739);
        assert_eq!(
            slot_of(b"{user1000}.following"),
            slot_of(b"{user1000}.followers")
        );
        // An empty tag hashes the whole key.
        assert_eq!(slot_of(b"{}x"), slot_of(b"{}x"));
        assert_ne!(slot_of(b"{}a"), slot_of(b"a"));
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://:secret@h:6379"), "redis://***@h:6379");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
