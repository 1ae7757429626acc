//! The Cake cost model (DESIGN.md section 1): computing chunk `i` costs
//! `a + b·i`, loading any chunk costs `ℓ`. Computing the first `k` of `n`
//! chunks while loading the rest costs `max(A(k), (n−k)·ℓ)` with
//! `A(k) = k·a + b·k(k−1)/2`.

use serde::{Deserialize, Serialize};

/// Measured or predicted per-chunk costs, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChunkCost {
    /// Compute time of chunk 0.
    pub a: f64,
    /// Extra compute time per earlier chunk (attention over the prefix).
    pub b: f64,
    /// Load time of one chunk.
    pub load: f64,
}

/// A split of `n` cached chunks: the first `computed` are computed, the
/// rest loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitPlan {
    pub computed: usize,
    pub loaded: usize,
    /// Predicted time until every chunk is ready.
    pub time: f64,
}

impl ChunkCost {
    /// Time to compute chunks `0..k`.
    pub fn compute_time(&self, k: usize) -> f64 {
        let k = k as f64;
        k * self.a + self.b * k * (k - 1.0).max(0.0) / 2.0
    }

    /// Time to load `n` chunks.
    pub fn load_time(&self, n: usize) -> f64 {
        n as f64 * self.load
    }

    /// Time of the split computing `k` of `n` chunks, both sides at once.
    pub fn split_time(&self, n: usize, k: usize) -> f64 {
        self.compute_time(k)
            .max(self.load_time(n.saturating_sub(k)))
    }
}

/// The best split of `n` chunks under `cost` (exhaustive: `n` is at most a
/// few hundred chunks).
pub fn best_split(cost: &ChunkCost, n: usize) -> SplitPlan {
    (0..=n)
        .map(|k| SplitPlan {
            computed: k,
            loaded: n - k,
            time: cost.split_time(n, k),
        })
        .min_by(|x, y| x.time.total_cmp(&y.time))
        .unwrap_or(SplitPlan {
            computed: 0,
            loaded: 0,
            time: 0.0,
        })
}

/// Predicts what Cake's two sides do over `n` chunks without knowing the
/// costs: compute claims chunks from the front one at a time; I/O keeps
/// `depth` loads in flight from the back over one link (loads finish one
/// every `load` seconds), claiming a chunk when it issues its load. Each
/// chunk goes to the side that claims it first. Unlike [`best_split`],
/// this includes the cost of a side committing to a chunk it finishes
/// late, which matters when `n` is small or one side is far faster.
pub fn simulate_cake(cost: &ChunkCost, n: usize, depth: usize) -> SplitPlan {
    let depth = depth.max(1);
    let (mut front, mut back) = (0usize, n); // compute claims `front`, I/O `back - 1`
    let mut issued = 0usize;
    let mut io_done = 0.0f64;
    while front < back {
        let compute_claim = cost.compute_time(front);
        let io_claim = if issued < depth {
            0.0
        } else {
            (issued - depth + 1) as f64 * cost.load
        };
        if io_claim < compute_claim {
            back -= 1;
            issued += 1;
            io_done = issued as f64 * cost.load;
        } else {
            front += 1;
        }
    }
    SplitPlan {
        computed: front,
        loaded: n - front,
        time: cost.compute_time(front).max(io_done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_single_resource_costs() {
        let c = ChunkCost {
            a: 1.0,
            b: 0.5,
            load: 2.0,
        };
        assert_eq!(c.split_time(4, 4), 4.0 + 0.5 * 6.0);
        assert_eq!(c.split_time(4, 0), 8.0);
    }

    #[test]
    fn balanced_best_split_is_about_half() {
        // Paper's A100 figures: 39 ms rising to 112 ms over 64 chunks.
        let b = (0.112 - 0.039) / 63.0;
        let n = 32;
        let compute_only = ChunkCost {
            a: 0.039,
            b,
            load: 0.0,
        }
        .compute_time(n);
        let c = ChunkCost {
            a: 0.039,
            b,
            load: compute_only / n as f64,
        };
        let best = best_split(&c, n);
        let ratio = best.time / compute_only;
        assert!(ratio > 0.4 && ratio < 0.6, "ratio {ratio}");
        assert!(best.computed < n / 2 + 2, "{best:?}");
    }

    #[test]
    fn simulated_cake_lands_near_the_best_split() {
        let b = (0.112 - 0.039) / 63.0;
        for load in [0.01, 0.05, 0.1, 0.3] {
            let c = ChunkCost { a: 0.039, b, load };
            let n = 64;
            let best = best_split(&c, n);
            let sim = simulate_cake(&c, n, 1);
            assert!(
                sim.time <= best.time * 1.1 + 1e-12,
                "{load}: {sim:?} vs {best:?}"
            );
            assert!(
                sim.computed.abs_diff(best.computed) <= 1,
                "{load}: {sim:?} vs {best:?}"
            );
        }
        // A few chunks and a far faster link: compute's first claim costs
        // more than loading everything.
        let c = ChunkCost {
            a: 1.0,
            b: 0.0,
            load: 0.1,
        };
        let sim = simulate_cake(&c, 4, 1);
        assert!(sim.time >= 1.0 && c.load_time(4) < 0.5, "{sim:?}");
    }

    #[test]
    fn free_loading_computes_nothing() {
        let c = ChunkCost {
            a: 1.0,
            b: 0.0,
            load: 0.0,
        };
        assert_eq!(best_split(&c, 10).computed, 0);
    }
}
