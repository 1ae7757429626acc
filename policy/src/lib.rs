//! `cake-policy`: pure decisions — the Cake cost model, placement, fairness
//! and shedding. It does no I/O and reads time only through a clock it is
//! given, so every decision is testable with paused time. It depends on no
//! other workspace crate.

mod cost;

pub use cost::{ChunkCost, SplitPlan, best_split, simulate_cake};
