//! Admission and placement state shared by the stack's `auth`, `admit` and
//! `place` layers: the live tenants and policy (swapped whole on reload),
//! the tenants' fair queue with the gateway's dispatch slots, and the
//! placer with its in-flight ledger. Every decision is `cake_policy`'s;
//! this module holds the state and the locks around it, and gives each
//! admitted request one [`Admitted`] that owns every release.

mod admitted;
mod holdings;
mod limits_redis;
mod placement;
mod prefixes;
mod queue;
mod reload;
pub(crate) mod sha256;
mod tenants;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwap;
use cake_policy::{Decision, Refusal, Share, ShedInput, TenantPolicy, decide};

use crate::config::{Config, PolicyConfig, TenantConfig};
use crate::error::GatewayError;
use crate::telemetry as tm;
use crate::worker::{WorkerPool, WorkerSlot};

pub use admitted::{Admitted, InFlight};
pub use limits_redis::SharedLimits;
pub use placement::{PlaceRequest, Placement};
pub use prefixes::{InFlightPrefixes, PrefixChunks, chunk_ids};
pub use queue::{DispatchSlots, Wait};
pub use tenants::{TenantEntry, Tenants};

/// What a reload replaces: the tenants and the policy.
pub struct Live {
    pub tenants: Tenants,
    pub policy: PolicyConfig,
}

/// See the module docs. Each part has one owner: the dispatch slots and
/// their fair queue ([`DispatchSlots`]), placement with its ledger
/// ([`Placement`]), the in-flight prefix registry ([`InFlightPrefixes`]),
/// the per-worker in-flight counts ([`InFlight`]); this type decides in
/// which order a request meets them and hands it one [`Admitted`].
pub struct Admission {
    live: ArcSwap<Live>,
    pool: Arc<WorkerPool>,
    slots: Arc<DispatchSlots>,
    placement: Arc<Placement>,
    prefixes: Arc<InFlightPrefixes>,
    in_flight: Arc<InFlight>,
}

/// What admission needs of a request.
pub struct AdmitRequest<'a> {
    pub tenant: &'a str,
    /// The configured tenant; `None` for `default`.
    pub entry: Option<&'a TenantEntry>,
    pub place: PlaceRequest<'a>,
}

fn limited(
    tenant: &str,
    limit: &'static str,
    reason: String,
    retry_after: Duration,
) -> GatewayError {
    tm::refused(tenant, limit);
    GatewayError::RateLimited {
        limit,
        reason,
        retry_after,
    }
}

impl Admission {
    pub fn new(
        policy: &PolicyConfig,
        tenants: &[TenantConfig],
        pool: Arc<WorkerPool>,
    ) -> Admission {
        let prefixes = Arc::<InFlightPrefixes>::default();
        Admission {
            live: ArcSwap::from_pointee(Live {
                tenants: Tenants::new(tenants, SharedLimits::from_policy(policy), None),
                policy: policy.clone(),
            }),
            slots: Arc::new(DispatchSlots::new(policy, pool.clone())),
            placement: Arc::new(Placement::new(policy, pool.clone(), prefixes.clone())),
            in_flight: Arc::new(InFlight::new(pool.clone())),
            prefixes,
            pool,
        }
    }

    /// Which worker computes each chunk of the requests in flight.
    pub fn prefixes(&self) -> &Arc<InFlightPrefixes> {
        &self.prefixes
    }

    /// The tenants and policy in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Requests being sent to the pool's worker `i` now.
    pub fn in_flight(&self, i: usize) -> u64 {
        self.in_flight.get(i)
    }

    /// Puts a validated config's tenants and policy in force. Requests
    /// already admitted keep what they hold.
    pub fn apply(&self, cfg: &Config) {
        let old = self.live.load_full();
        let redis = SharedLimits::reuse_or_new(&cfg.policy, old.tenants.shared_limits());
        let tenants = Tenants::new(&cfg.tenants, redis, Some(&old.tenants));
        self.placement.set_policy(&cfg.policy);
        self.slots.set_limits(&cfg.policy);
        self.live.store(Arc::new(Live {
            tenants,
            policy: cfg.policy.clone(),
        }));
    }

    /// 503: no worker is up; the next health check may bring one back.
    pub fn no_healthy_worker(&self) -> GatewayError {
        GatewayError::NoHealthyWorker {
            detail: String::new(),
            retry_after: self.pool.check_interval(),
        }
    }

    /// Admits a request, in order: the tenant's limits (prompt length: 413;
    /// request rate, prompt-token rate, concurrency: 429), then the
    /// predicted wait (the gateway's queue ahead at the slots' measured
    /// rate, scaled by how far recent waits ran past their predictions,
    /// plus the chosen worker's own backlog): past the queue deadline,
    /// refused at once (429 `queue_timeout`), SLO or not; then SLO shedding
    /// (a request predicted to miss its tenant's TTFT objective is refused
    /// at once, 429), then a dispatch slot: at once when one is free and no
    /// one waits, otherwise in the tenants' fair queue (full: 429; still
    /// waiting at the deadline: 429). Every refusal carries `Retry-After`:
    /// the predicted time until a slot frees for it
    /// ([`Wait::retry_after`]). The decisions are `cake_policy`'s
    /// ([`cake_policy::TenantLimiter`], [`cake_policy::decide`],
    /// [`cake_policy::FairQueue`], [`cake_policy::SlotMeter`]).
    pub async fn admit(&self, req: &AdmitRequest<'_>) -> Result<Admitted, GatewayError> {
        let live = self.live();
        let name = req.tenant;
        let default_policy;
        let policy: &TenantPolicy = match req.entry {
            Some(e) => &e.policy,
            None => {
                default_policy = TenantPolicy::new("default");
                &default_policy
            }
        };
        let cost = req.place.prompt.len() as u64;
        let now = Instant::now();
        let mut permit = None;
        if let Some(e) = req.entry {
            match e.admit(now, cost).await {
                Ok(p) => permit = Some(p),
                Err(Refusal::PromptTooLong { max, got }) => {
                    tm::refused(name, "max_prompt_tokens");
                    return Err(GatewayError::PromptTooLong {
                        tokens: got as usize,
                        limit: max as usize,
                    });
                }
                Err(Refusal::Limited(l)) => {
                    return Err(limited(
                        name,
                        l.limit.as_str(),
                        l.to_string(),
                        l.retry_after,
                    ));
                }
            }
        }
        if self.pool.healthy() == 0 {
            return Err(self.no_healthy_worker());
        }
        let deadline = policy
            .queue_deadline
            .unwrap_or_else(|| live.policy.queue_deadline());
        let share = policy.share();
        let estimate = self.placement.estimate(&req.place);
        let wait = self.predicted_wait(name, share, cost, estimate.as_ref());
        if wait.total() > deadline {
            return Err(limited(
                name,
                "queue_timeout",
                format!(
                    "predicted wait {:?} (queue {:?}, worker {:?}) is past the queue deadline of {deadline:?}",
                    wait.total(),
                    wait.queue,
                    wait.worker
                ),
                wait.retry_after(deadline),
            ));
        }
        if let Some(slo) = policy.ttft_slo
            && let Some((p, _)) = estimate
        {
            let input = ShedInput {
                predicted_ttft: p.ttft,
                idle_ttft: p.idle_ttft,
                queue_wait: wait.queue,
                slo: Some(slo),
                queue_deadline: Some(deadline),
            };
            if let Decision::Shed { retry_after } = decide(&input) {
                let expected = input.queue_wait + input.predicted_ttft;
                return Err(limited(
                    name,
                    "ttft_slo",
                    format!(
                        "predicted time to first token {expected:?} misses the objective of {slo:?}"
                    ),
                    retry_after,
                ));
            }
        }
        let rx = self
            .slots
            .enqueue(name, share, cost, now + deadline, wait.queue_measured)
            .map_err(|e| {
                limited(
                    name,
                    "queue_full",
                    e.to_string(),
                    wait.retry_after(deadline),
                )
            })?;
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(slot)) => Ok(Admitted::new(permit, slot, self.in_flight.clone())),
            _ => {
                // Mispredicted, or the fleet slowed: when a request sent now
                // would be served in time.
                let estimate = self.placement.estimate(&req.place);
                let wait = self.predicted_wait(name, share, cost, estimate.as_ref());
                Err(limited(
                    name,
                    "queue_timeout",
                    format!("no worker free within the queue deadline of {deadline:?}"),
                    wait.retry_after(deadline),
                ))
            }
        }
    }

    /// A request's predicted wait: the gateway's queue ahead of it
    /// (measured slot turnover; before any, the fleet's prefill rate), and
    /// the backlog of the worker the cost model picks (its report plus the
    /// ledger: its TTFT there less its TTFT on the idle worker).
    fn predicted_wait(
        &self,
        tenant: &str,
        share: Share,
        cost: u64,
        estimate: Option<&(cake_policy::Prediction, f64)>,
    ) -> Wait {
        let rate = estimate.map_or(0.0, |(_, r)| *r);
        let mut w = self.slots.queue_wait(tenant, share, cost, rate);
        if let Some((p, _)) = estimate {
            w.worker = p.ttft.saturating_sub(p.idle_ttft);
        }
        w
    }

    /// Places an admitted request ([`Placement::place`]): the workers to
    /// try, the chosen one first; its reservation goes into `admitted`.
    /// No worker up: 503.
    pub fn place(
        &self,
        admitted: &mut Admitted,
        req: &PlaceRequest<'_>,
    ) -> Result<Vec<Arc<WorkerSlot>>, GatewayError> {
        let (order, reservation, _) = self
            .placement
            .place(req)
            .ok_or_else(|| self.no_healthy_worker())?;
        admitted.set_reservation(reservation);
        Ok(order)
    }

    /// Predicted time until one of the requests in flight gives its slot
    /// back: what a full worker's refusal says to wait.
    pub fn next_slot(&self) -> Duration {
        self.slots.next_slot()
    }

    /// Serves the queue (deadlines, workers coming back).
    pub fn pump(&self) {
        self.slots.pump();
    }

    /// Serves the queue every `every` until the admission state is dropped.
    pub fn spawn_pump(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(a) = weak.upgrade() else { return };
                a.pump();
            }
        })
    }
}

pub use reload::watch;
