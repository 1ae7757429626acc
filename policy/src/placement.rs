//! Placement: which worker serves a request (DESIGN.md section 5).
//!
//! `adaptive` picks the worker with the lowest predicted TTFT under the Cake
//! cost model ([`crate::predict`]), which sends cached requests toward idle
//! I/O and fresh ones toward idle compute, plus a weight times the work the
//! request itself adds there (its TTFT on that worker idle): the delay it
//! puts on whoever queues behind it. TTFT alone moves a request off the
//! worker holding its prefix as soon as the backlogs differ by the prefill
//! it then redoes; the fleet does that prefill on top of its other work
//! and saturates sooner. The baselines it is compared against:
//! `round-robin`, `least-loaded` (shortest backlog in seconds) and
//! `cache-affinity` (a prefix goes to the worker that last served it). Every
//! policy skips workers that are not healthy; exact ties go to the first
//! worker at or after a rotating cursor, so an idle fleet is spread evenly.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::load::{Prediction, RateDefaults, RequestShape, WorkerLoad, predict_with_local};

/// Which placement rule to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementPolicy {
    /// Lowest predicted TTFT under the Cake cost model.
    #[default]
    Adaptive,
    /// Each healthy worker in turn.
    RoundRobin,
    /// Lowest compute plus I/O backlog, in seconds.
    LeastLoaded,
    /// The worker that last served the same prefix, else least-loaded.
    CacheAffinity,
}

impl PlacementPolicy {
    /// Every policy, in the order the names are listed in errors.
    pub const ALL: [PlacementPolicy; 4] = [
        PlacementPolicy::Adaptive,
        PlacementPolicy::RoundRobin,
        PlacementPolicy::LeastLoaded,
        PlacementPolicy::CacheAffinity,
    ];

    /// The config name (`"adaptive"`, `"round-robin"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementPolicy::Adaptive => "adaptive",
            PlacementPolicy::RoundRobin => "round-robin",
            PlacementPolicy::LeastLoaded => "least-loaded",
            PlacementPolicy::CacheAffinity => "cache-affinity",
        }
    }
}

impl fmt::Display for PlacementPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A placement policy name that is not one of [`PlacementPolicy::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown placement policy {given:?}; valid values: adaptive, round-robin, least-loaded, cache-affinity"
)]
pub struct UnknownPolicy {
    /// The name given.
    pub given: String,
}

impl FromStr for PlacementPolicy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PlacementPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy {
                given: s.to_owned(),
            })
    }
}

/// A prompt prefix's identity for cache affinity: the chained key of its
/// first chunk (blake3), or of the longest stored run.
pub type PrefixKey = [u8; 32];

/// What placement sees of one worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerView {
    /// The worker's id; [`Placer::choose`] returns it.
    pub index: usize,
    /// Healthy and accepting requests.
    pub healthy: bool,
    /// Its load with the in-flight ledger added ([`crate::Ledger::effective_load`]).
    pub load: WorkerLoad,
    /// Tokens of this request's prefix stored where this worker can read
    /// them, when known per worker; `None` means "as in the request".
    pub cached_tokens: Option<u64>,
    /// Leading tokens of this request's prompt in this worker's own tiers
    /// (memory, disk): ready there without a prefill or a crossing of the
    /// shared store's link. 0 when it holds none or nobody knows.
    pub local_tokens: u64,
}

/// The chosen worker and what the cost model predicts there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// [`WorkerView::index`] of the chosen worker.
    pub worker: usize,
    /// The request on that worker (whatever the policy, for the ledger and
    /// for shedding).
    pub prediction: Prediction,
}

/// Placement state: the round-robin cursor and the affinity table.
#[derive(Debug)]
pub struct Placer {
    policy: PlacementPolicy,
    defaults: RateDefaults,
    cursor: usize,
    affinity: Affinity,
    /// `adaptive`: seconds of score per second of the request's own work.
    work_weight: f64,
}

/// The default weight of a request's own work in `adaptive`'s score.
pub const DEFAULT_WORK_WEIGHT: f64 = 1.0;

impl Placer {
    /// A placer for `policy` remembering up to `affinity_capacity` prefixes
    /// (used by `cache-affinity` only), with the built-in rate defaults.
    pub fn new(policy: PlacementPolicy, affinity_capacity: usize) -> Self {
        Self {
            policy,
            defaults: RateDefaults::default(),
            cursor: 0,
            affinity: Affinity::new(affinity_capacity),
            work_weight: DEFAULT_WORK_WEIGHT,
        }
    }

    /// `adaptive` scores a worker by the request's TTFT there plus
    /// `weight` × its TTFT there idle (the work it adds); 0: TTFT alone.
    pub fn set_work_weight(&mut self, weight: f64) {
        self.work_weight = weight;
    }

    /// Uses `defaults` for rates a worker has not measured.
    pub fn with_defaults(mut self, defaults: RateDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// The policy in use.
    pub fn policy(&self) -> PlacementPolicy {
        self.policy
    }

    /// The worker for `req`, or `None` when no worker is healthy.
    pub fn choose(
        &mut self,
        workers: &[WorkerView],
        req: &RequestShape,
        prefix: Option<&PrefixKey>,
    ) -> Option<usize> {
        self.place(workers, req, prefix).map(|p| p.worker)
    }

    /// Like [`Placer::choose`], with the prediction on the chosen worker.
    pub fn place(
        &mut self,
        workers: &[WorkerView],
        req: &RequestShape,
        prefix: Option<&PrefixKey>,
    ) -> Option<Placement> {
        let pos = match self.policy {
            PlacementPolicy::RoundRobin => self.next_healthy(workers),
            PlacementPolicy::Adaptive => self.lowest(workers, |v| {
                let p = self.predict_on(v, req);
                p.ttft.as_secs_f64() + self.work_weight * p.idle_ttft.as_secs_f64()
            }),
            PlacementPolicy::LeastLoaded => self.least_loaded(workers),
            PlacementPolicy::CacheAffinity => {
                let sticky = prefix
                    .and_then(|k| self.affinity.get(k))
                    .and_then(|w| workers.iter().position(|v| v.index == w && v.healthy));
                let pos = sticky.or_else(|| self.least_loaded(workers));
                if let (Some(k), Some(p)) = (prefix, pos) {
                    self.affinity.insert(*k, workers[p].index);
                }
                pos
            }
        }?;
        self.cursor = pos + 1;
        let view = &workers[pos];
        Some(Placement {
            worker: view.index,
            prediction: self.predict_on(view, req),
        })
    }

    fn predict_on(&self, v: &WorkerView, req: &RequestShape) -> Prediction {
        let req = RequestShape {
            cached_tokens: v.cached_tokens.unwrap_or(req.cached_tokens),
            ..*req
        };
        predict_with_local(&v.load, &req, v.local_tokens, &self.defaults)
    }

    fn least_loaded(&self, workers: &[WorkerView]) -> Option<usize> {
        self.lowest(workers, |v| {
            let (c, io) = v.load.backlog_secs(&self.defaults);
            c + io
        })
    }

    fn next_healthy(&self, workers: &[WorkerView]) -> Option<usize> {
        let n = workers.len();
        (0..n)
            .map(|i| (self.cursor + i) % n)
            .find(|&p| workers[p].healthy)
    }

    /// The healthy worker with the lowest `score`, ties to the first at or
    /// after the cursor.
    fn lowest(&self, workers: &[WorkerView], score: impl Fn(&WorkerView) -> f64) -> Option<usize> {
        let n = workers.len();
        let mut best: Option<(usize, f64)> = None;
        for p in (0..n).map(|i| (self.cursor + i) % n) {
            if !workers[p].healthy {
                continue;
            }
            let s = score(&workers[p]);
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((p, s));
            }
        }
        best.map(|(p, _)| p)
    }
}

/// A bounded prefix → worker map, LRU-ish: two generations of at most
/// `capacity / 2` entries each; a hit in the old generation moves to the
/// new one, and when the new one fills the old one is dropped whole. So
/// recently used prefixes survive and memory stays within `capacity`
/// entries at O(1) per operation.
#[derive(Debug)]
struct Affinity {
    half: usize,
    young: HashMap<PrefixKey, usize>,
    old: HashMap<PrefixKey, usize>,
}

impl Affinity {
    fn new(capacity: usize) -> Self {
        Self {
            half: (capacity / 2).max(1),
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }

    fn get(&mut self, k: &PrefixKey) -> Option<usize> {
        if let Some(&w) = self.young.get(k) {
            return Some(w);
        }
        let w = self.old.remove(k)?;
        self.insert(*k, w);
        Some(w)
    }

    fn insert(&mut self, k: PrefixKey, w: usize) {
        if !self.young.contains_key(&k) && self.young.len() >= self.half {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&k);
        self.young.insert(k, w);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(compute_tokens: u64, io_bytes: u64) -> WorkerLoad {
        WorkerLoad {
            queued_compute_tokens: compute_tokens,
            queued_io_bytes: io_bytes,
            compute_a: 0.04,
            compute_b: 0.001,
            bandwidth: 1e9,
            chunk_tokens: 256,
            kv_bytes_per_token: 100_000,
        }
    }

    fn view(index: usize, l: WorkerLoad) -> WorkerView {
        WorkerView {
            index,
            healthy: true,
            load: l,
            cached_tokens: None,
            local_tokens: 0,
        }
    }

    fn req(prompt: u64, cached: u64) -> RequestShape {
        RequestShape {
            prompt_tokens: prompt,
            cached_tokens: cached,
            kv_bytes_per_token: 0,
        }
    }

    /// Worker 10: compute busy (2 s), I/O idle. Worker 11: compute idle,
    /// I/O busy (5 s).
    fn split_fleet() -> Vec<WorkerView> {
        vec![
            view(10, load(256 * 50, 0)),
            view(11, load(0, 5_000_000_000)),
        ]
    }

    #[test]
    fn cached_request_goes_to_idle_io() {
        let mut p = Placer::new(PlacementPolicy::Adaptive, 16);
        // 64 cached chunks: computing them takes 4.6 s, loading 1.6 s.
        let r = req(64 * 256 + 1, 64 * 256);
        let got = p.place(&split_fleet(), &r, None).map(|x| x.worker);
        assert_eq!(got, Some(10));
    }

    #[test]
    fn fresh_request_goes_to_idle_compute() {
        let mut p = Placer::new(PlacementPolicy::Adaptive, 16);
        assert_eq!(p.choose(&split_fleet(), &req(4096, 0), None), Some(11));
    }

    #[test]
    fn adaptive_prefers_worker_that_holds_the_prefix() {
        let mut p = Placer::new(PlacementPolicy::Adaptive, 16);
        let mut ws = vec![view(0, load(0, 0)), view(1, load(0, 0))];
        ws[0].cached_tokens = Some(0);
        ws[1].cached_tokens = Some(32 * 256);
        assert_eq!(p.choose(&ws, &req(32 * 256 + 5, 0), None), Some(1));
    }

    /// A fleet of alike workers where the shared store's link is slow
    /// (loading a chunk takes 3x computing it) and worker `holder` has the
    /// request's 16-chunk prefix in its own memory tier.
    fn local_fleet(holder: usize, holder_backlog_tokens: u64) -> Vec<WorkerView> {
        let slow_link = WorkerLoad {
            bandwidth: 256.0 * 100_000.0 / (3.0 * 0.04),
            ..load(0, 0)
        };
        let mut ws: Vec<_> = (0..3).map(|i| view(i, slow_link)).collect();
        ws[holder].local_tokens = 16 * 256;
        ws[holder].load.queued_compute_tokens = holder_backlog_tokens;
        ws
    }

    #[test]
    fn adaptive_prefers_the_worker_holding_the_prefix_locally() {
        let mut p = Placer::new(PlacementPolicy::Adaptive, 16);
        let r = req(16 * 256 + 40, 16 * 256);
        for holder in 0..3 {
            let got = p.place(&local_fleet(holder, 0), &r, None);
            assert_eq!(got.map(|x| x.worker), Some(holder));
            // Its chunks are ready there: nothing to load, the suffix only.
            let pred = got.map(|x| x.prediction);
            assert_eq!(pred.map(|x| (x.io_bytes, x.compute_tokens)), Some((0, 40)));
        }
    }

    #[test]
    fn a_holder_busy_past_the_prefix_cost_loses_it() {
        let mut p = Placer::new(PlacementPolicy::Adaptive, 16);
        let r = req(16 * 256 + 40, 16 * 256);
        // 256 chunks of compute queued (over 10 s): recomputing the prefix
        // elsewhere (about 0.8 s) is cheaper than waiting.
        let got = p.choose(&local_fleet(1, 256 * 256), &r, None);
        assert!(matches!(got, Some(0 | 2)), "{got:?}");
        // One chunk queued: still the holder.
        let got = p.choose(&local_fleet(1, 256), &r, None);
        assert_eq!(got, Some(1));
    }

    #[test]
    fn a_holder_keeps_its_prefix_until_the_gap_pays_for_the_redone_work() {
        let r = req(16 * 256 + 40, 16 * 256);
        // 24 chunks queued on the holder (about 1 s): more than the prefix
        // costs elsewhere (about 0.56 s, split over the slow link), less
        // than that plus the work it adds there.
        let fleet = local_fleet(1, 24 * 256);
        let mut ttft_only = Placer::new(PlacementPolicy::Adaptive, 16);
        ttft_only.set_work_weight(0.0);
        assert!(matches!(ttft_only.choose(&fleet, &r, None), Some(0 | 2)));
        let mut p = Placer::new(PlacementPolicy::Adaptive, 16);
        assert_eq!(p.choose(&fleet, &r, None), Some(1));
        // Fresh work has no holder: the weight changes nothing there.
        let fresh = req(4096, 0);
        assert_eq!(p.choose(&split_fleet(), &fresh, None), Some(11));
    }

    #[test]
    fn local_chunks_beyond_the_shared_store_count() {
        // A conversation's last turn is in the worker's memory tier but not
        // (yet) in the shared store: only the holder sees it as cached.
        let mut p = Placer::new(PlacementPolicy::Adaptive, 16);
        let r = req(16 * 256 + 40, 0);
        assert_eq!(p.choose(&local_fleet(2, 0), &r, None), Some(2));
        // The chunk holding the last token is never taken as ready.
        let mut ws = local_fleet(2, 0);
        ws[2].local_tokens = 64 * 256;
        let pred = p.place(&ws, &req(16 * 256, 0), None).map(|x| x.prediction);
        assert_eq!(pred.map(|x| x.compute_tokens), Some(256));
    }

    #[test]
    fn baselines_ignore_where_chunks_are() {
        for policy in [PlacementPolicy::RoundRobin, PlacementPolicy::LeastLoaded] {
            let mut p = Placer::new(policy, 16);
            let r = req(16 * 256 + 40, 16 * 256);
            let got: Vec<_> = (0..3)
                .filter_map(|_| p.choose(&local_fleet(1, 0), &r, None))
                .collect();
            assert_eq!(got, vec![0, 1, 2], "{policy}");
        }
    }

    #[test]
    fn round_robin_cycles_over_healthy_workers() {
        let mut p = Placer::new(PlacementPolicy::RoundRobin, 16);
        let mut ws: Vec<_> = (0..3).map(|i| view(i, load(0, 0))).collect();
        let r = req(100, 0);
        let got: Vec<_> = (0..6).filter_map(|_| p.choose(&ws, &r, None)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
        ws[1].healthy = false;
        let got: Vec<_> = (0..4).filter_map(|_| p.choose(&ws, &r, None)).collect();
        assert_eq!(got, vec![0, 2, 0, 2]);
    }

    #[test]
    fn least_loaded_counts_both_backlogs_in_seconds() {
        let mut p = Placer::new(PlacementPolicy::LeastLoaded, 16);
        // 1 s of compute vs 2 s of I/O.
        let ws = vec![view(0, load(256 * 25, 0)), view(1, load(0, 2_000_000_000))];
        assert_eq!(p.choose(&ws, &req(10, 0), None), Some(0));
    }

    #[test]
    fn affinity_sticks_and_falls_back() {
        let mut p = Placer::new(PlacementPolicy::CacheAffinity, 16);
        let mut ws = vec![view(0, load(0, 0)), view(1, load(0, 0))];
        let r = req(1000, 0);
        let k = [7u8; 32];
        let first = p.choose(&ws, &r, Some(&k));
        assert!(first.is_some());
        // Even when that worker becomes the busier one, the prefix sticks.
        let w = first.unwrap_or_default();
        ws[w].load = load(256 * 100, 0);
        for _ in 0..5 {
            assert_eq!(p.choose(&ws, &r, Some(&k)), Some(w));
        }
        ws[w].healthy = false;
        let other = 1 - w;
        assert_eq!(p.choose(&ws, &r, Some(&k)), Some(other));
        // It now sticks to the new worker, even once the old one is back.
        ws[w].healthy = true;
        assert_eq!(p.choose(&ws, &r, Some(&k)), Some(other));
    }

    #[test]
    fn unhealthy_workers_are_never_chosen() {
        for policy in PlacementPolicy::ALL {
            let mut p = Placer::new(policy, 16);
            let mut ws = vec![view(0, load(0, 0)), view(1, load(256 * 1000, 0))];
            ws[0].healthy = false;
            for _ in 0..3 {
                assert_eq!(
                    p.choose(&ws, &req(10, 0), Some(&[1; 32])),
                    Some(1),
                    "{policy}"
                );
            }
            ws[1].healthy = false;
            assert_eq!(p.choose(&ws, &req(10, 0), None), None, "{policy}");
            assert_eq!(p.choose(&[], &req(10, 0), None), None, "{policy}");
        }
    }

    #[test]
    fn idle_fleet_ties_are_spread() {
        let mut p = Placer::new(PlacementPolicy::Adaptive, 16);
        let ws: Vec<_> = (0..3).map(|i| view(i, load(0, 0))).collect();
        let got: Vec<_> = (0..3)
            .filter_map(|_| p.choose(&ws, &req(10, 0), None))
            .collect();
        assert_eq!(got, vec![0, 1, 2]);
    }

    #[test]
    fn policy_names_round_trip_and_errors_list_valid_values() {
        for policy in PlacementPolicy::ALL {
            assert_eq!(policy.as_str().parse::<PlacementPolicy>(), Ok(policy));
        }
        let err = "fastest"
            .parse::<PlacementPolicy>()
            .err()
            .map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(msg.contains("\"fastest\""), "{msg}");
        for policy in PlacementPolicy::ALL {
            assert!(msg.contains(policy.as_str()), "{msg}");
        }
    }

    #[test]
    fn affinity_table_is_bounded() {
        let mut a = Affinity::new(10);
        for i in 0..100u8 {
            a.insert([i; 32], usize::from(i));
            assert!(a.len() <= 10);
        }
        // The most recent prefixes are still there.
        assert_eq!(a.get(&[99; 32]), Some(99));
        assert_eq!(a.get(&[0; 32]), None);
        // A hit in the old generation survives the next rotation.
        let old = [92u8; 32];
        assert_eq!(a.get(&old), Some(92));
        for i in 200..204u8 {
            a.insert([i; 32], 0);
        }
        assert_eq!(a.get(&old), Some(92));
    }
}
