//! Admission and placement state shared by the stack's `auth`, `admit` and
//! `place` layers: the live tenants and policy (swapped whole on reload),
//! the tenants' fair queue with the gateway's dispatch slots, and the
//! placer with its in-flight ledger. Every decision is `cake_policy`'s;
//! this module holds the state and the locks around it.

mod holdings;
mod limits_redis;
mod placement;
mod prefixes;
mod queue;
mod reload;
pub(crate) mod sha256;
mod tenants;

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Config, PolicyConfig, TenantConfig};
use crate::worker::WorkerPool;

pub use limits_redis::SharedLimits;
pub use placement::{PlaceRequest, Reservation};
pub use prefixes::{InFlightPrefixes, PrefixChunks, chunk_ids};
pub use queue::{SlotGuard, Wait};
pub use tenants::{TenantEntry, TenantPermit, Tenants};

/// What a reload replaces: the tenants and the policy.
pub struct Live {
    pub tenants: Tenants,
    pub policy: PolicyConfig,
}

/// See the module docs.
pub struct Admission {
    live: ArcSwap<Live>,
    pool: Arc<WorkerPool>,
    sched: Mutex<queue::Sched>,
    place: Mutex<placement::PlaceState>,
    prefixes: Arc<InFlightPrefixes>,
}

impl Admission {
    pub fn new(
        policy: &PolicyConfig,
        tenants: &[TenantConfig],
        pool: Arc<WorkerPool>,
    ) -> Admission {
        let n = pool.slots().len();
        Admission {
            live: ArcSwap::from_pointee(Live {
                tenants: Tenants::new(tenants, SharedLimits::from_policy(policy), None),
                policy: policy.clone(),
            }),
            pool,
            sched: Mutex::new(queue::Sched::new(policy)),
            place: Mutex::new(placement::PlaceState::new(
                policy.placement,
                n,
                policy.local_chunks_per_worker,
            )),
            prefixes: Arc::default(),
        }
    }

    /// Which worker computes each chunk of the requests in flight.
    pub fn prefixes(&self) -> &InFlightPrefixes {
        &self.prefixes
    }

    /// The tenants and policy in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Puts a validated config's tenants and policy in force. Requests
    /// already admitted keep what they hold.
    pub fn apply(&self, cfg: &Config) {
        let old = self.live.load_full();
        let redis = SharedLimits::reuse_or_new(&cfg.policy, old.tenants.shared_limits());
        let tenants = Tenants::new(&cfg.tenants, redis, Some(&old.tenants));
        if cfg.policy.placement != old.policy.placement {
            self.place.lock().set_policy(cfg.policy.placement);
        }
        self.sched.lock().set_limits(&cfg.policy);
        self.live.store(Arc::new(Live {
            tenants,
            policy: cfg.policy.clone(),
        }));
    }

    /// Serves the queue every `every` (deadlines, workers coming back) until
    /// the admission state is dropped.
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
