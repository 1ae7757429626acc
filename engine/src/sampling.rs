//! Turning logits into the next token: greedy, temperature, top-k, top-p,
//! repetition penalty, all seeded.

use crate::{EngineError, Rng};

/// How to pick tokens. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means none; > 1 discourages tokens already seen.
    pub repetition_penalty: f32,
    /// Seed of this request's generator; `None` draws one.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), EngineError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(EngineError::BadRequest(format!(
                "`temperature` must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(EngineError::BadRequest(format!(
                "`top_p` must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(EngineError::BadRequest(format!(
                "`repetition_penalty` must be > 0, got {}",
                self.repetition_penalty
            )));
        }
        Ok(())
    }
}

/// A request's sampler: its parameters and its own generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

/// `log_softmax` of a row, in f64 for stable sums.
pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

/// Indices of the `k` largest values, largest first (ties: lower index).
pub(crate) fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Sampler {
            params,
            rng: Rng::new(seed),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token among the first `allowed` ids (the ids the tokenizer
    /// can decode); `seen` are tokens for the repetition penalty;
    /// `banned` are ids that must not be picked now (EOS before
    /// `min_tokens`).
    pub fn sample(&mut self, logits: &[f32], allowed: usize, seen: &[u32], banned: &[u32]) -> u32 {
        let allowed = allowed.clamp(1, logits.len().max(1));
        let mut l: Vec<f32> = logits[..allowed.min(logits.len())].to_vec();
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen_sorted: Vec<u32> = seen.to_vec();
            seen_sorted.sort_unstable();
            seen_sorted.dedup();
            for &t in &seen_sorted {
                if let Some(v) = l.get_mut(t as usize) {
                    *v = if *v > 0.0 {
                        *v / p.repetition_penalty
                    } else {
                        *v * p.repetition_penalty
                    };
                }
            }
        }
        for &b in banned {
            if let Some(v) = l.get_mut(b as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
        if p.temperature == 0.0 {
            return top_indices(&l, 1).first().copied().unwrap_or(0) as u32;
        }
        let inv_t = 1.0 / p.temperature;
        let mut cand = if p.top_k > 0 {
            top_indices(&l, p.top_k)
        } else {
            top_indices(&l, l.len())
        };
        let max = l[cand[0]];
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&i| (((l[i] - max) * inv_t) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (j, &pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p as f64 {
                    keep = j + 1;
                    break;
                }
            }
            cand.truncate(keep);
            probs.truncate(keep);
            let t: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= t);
        }
        let r = self.rng.next_f64();
        let mut acc = 0.0;
        for (j, &pr) in probs.iter().enumerate() {
            acc += pr;
            if r < acc {
                return cand[j] as u32;
            }
        }
        cand[cand.len() - 1] as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_p,
            seed: Some(seed),
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(params(0.0, 1.0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], 3, &[], &[]), 1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], 3, &[], &[1]), 2);
        // Ids past `allowed` are never chosen.
        assert_eq!(s.sample(&[0.1, 3.0, 9.0], 2, &[], &[]), 1);
    }

    #[test]
    fn seeded_sampling_repeats_and_follows_distribution() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, 1.0, seed));
            (0..4000)
                .map(|_| s.sample(&logits, 2, &[], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        let ones = draw(5).iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.04, "{ones}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        let logits = [5.0f32, 0.0, 0.0, 0.0];
        let mut s = Sampler::new(params(1.0, 0.5, 9));
        for _ in 0..200 {
            assert_eq!(s.sample(&logits, 4, &[], &[]), 0);
        }
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let ls = log_softmax(&[1.0, 2.0, 3.0, -1000.0]);
        let s: f64 = ls.iter().map(|&x| (x as f64).exp()).sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert_eq!(top_indices(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
    }

    #[test]
    fn validate_names_fields() {
        let e = params(-1.0, 1.0, 0).validate().unwrap_err();
        assert!(e.to_string().contains("temperature"));
        let e = params(1.0, 0.0, 0).validate().unwrap_err();
        assert!(e.to_string().contains("top_p"));
    }
}
