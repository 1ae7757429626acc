//! `cake-policy`: pure decisions — the Cake cost model, placement, fairness
//! and shedding. It does no I/O, starts no threads and never reads a clock:
//! every instant is passed in by the caller, so every decision is testable
//! with paused time. It depends on no other workspace crate.
//!
//! What each module decides:
//!
//! - `cost`: the Cake cost model of one request's cached chunks — compute
//!   chunk `i` in `a + b·i`, load any chunk in `ℓ`, meet where both finish
//!   ([`best_split`], [`simulate_cake`]).
//! - `load`: what a worker reports ([`WorkerLoad`]) and a request's
//!   predicted TTFT on it, backlogs included ([`predict`], [`predict_ttft`]).
//! - `ledger`: work the gateway sent and no report shows yet ([`Ledger`]),
//!   added to reports so decisions do not wait for them.
//! - `placement`: which worker serves a request ([`Placer`]): `adaptive`
//!   (lowest predicted TTFT) or the baselines `round-robin`, `least-loaded`,
//!   `cache-affinity`.
//! - `fair`: which waiting request goes next ([`FairQueue`]): strict
//!   priority levels, deficit round robin by weight within a level, bounded,
//!   with deadlines.
//! - `limits`: whether a tenant is over its request rate, prompt-token
//!   rate, concurrency or prompt length ([`TenantLimiter`]), and when to
//!   retry.
//! - `shed`: whether to refuse a request at once because it cannot meet its
//!   tenant's TTFT SLO ([`decide`]).
//! - `slots`: how fast the gateway's dispatch slots turn over, measured
//!   ([`SlotMeter`]): the queue's real drain rate and the time until a
//!   slot frees.
//! - `tenant`: a tenant's policy as configured ([`TenantPolicy`]) and its
//!   validation.
//! - `invalid`: the one shape of a config value that cannot be used
//!   ([`Invalid`]: field, value, reason), shared by every crate's config
//!   validation.

mod cost;
mod fair;
mod invalid;
mod ledger;
mod limits;
mod load;
mod placement;
mod shed;
mod slots;
mod tenant;

pub use cost::{ChunkCost, SplitPlan, best_split, simulate_cake};
pub use fair::{FairQueue, QueueBound, QueueFull, Share};
pub use invalid::Invalid;
pub use ledger::{Ledger, Work};
pub use limits::{
    CONCURRENCY_RETRY, LimitKind, Limited, Refusal, TenantLimiter, TenantLimits, TokenBucket,
    retry_after_secs,
};
pub use load::{
    Prediction, RateDefaults, RequestShape, WorkerLoad, predict, predict_ttft, predict_with_local,
};
pub use placement::{
    DEFAULT_WORK_WEIGHT, Placement, PlacementPolicy, Placer, PrefixKey, UnknownPolicy, WorkerView,
};
pub use shed::{Decision, ShedInput, decide, prefill_rate, queue_wait};
pub use slots::SlotMeter;
pub use tenant::{InvalidTenant, TenantPolicy};
