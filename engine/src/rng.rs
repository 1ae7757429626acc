//! A small seeded generator: xoshiro256** seeded through splitmix64, from
//! `rand_xoshiro`. The seed-to-stream mapping is fixed (the golden test
//! below pins it), so seeded weights and sampling never change with a
//! dependency bump without a failing test.

use rand_xoshiro::Xoshiro256StarStar;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};

/// Deterministic pseudo-random numbers from a 64-bit seed.
#[derive(Debug, Clone)]
pub struct Rng(Xoshiro256StarStar);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // The state is four splitmix64 outputs from `seed`.
        Rng(Xoshiro256StarStar::seed_from_u64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `[0, 1)`, double precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    /// The stream for a seed is a contract (seeded synthetic weights, bench
    /// prompts, sampling): these values come from the hand-written
    /// generator this replaced.
    #[test]
    fn seed_to_stream_is_fixed() {
        let golden: [(u64, [u64; 4]); 3] = [
            (
                0,
                [
                    0x99ec5f36cb75f2b4,
                    0xbf6e1f784956452a,
                    0x1a5f849d4933e6e0,
                    0x6aa594f1262d2d2c,
                ],
            ),
            (
                7,
                [
                    0xb358faf74ef9765a,
                    0x475c3d964f482cd2,
                    0xd6f1d349952c7996,
                    0xfb2938731e807240,
                ],
            ),
            (
                0xDEAD_BEEF,
                [
                    0xc5555444a74d7e83,
                    0x65c30d37b4b16e38,
                    0x54f773200a4efa23,
                    0x429aed75fb958af7,
                ],
            ),
        ];
        for (seed, want) in golden {
            let mut r = Rng::new(seed);
            let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
            assert_eq!(got, want, "seed {seed}");
        }
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = Rng::new(3);
        let n = 20_000;
        let xs: Vec<f32> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f32>() / n as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n as f32;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
