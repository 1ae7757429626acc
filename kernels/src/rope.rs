/// Llama-3 style frequency scaling of rotary embeddings
/// (`rope_scaling.rope_type = "llama3"` in Hugging Face configs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

/// Inverse frequencies of rotary position embeddings for one head size,
/// in the Hugging Face "rotate half" layout (pairs `i` and `i + head_dim/2`).
#[derive(Debug, Clone)]
pub struct RopeTable {
    head_dim: usize,
    inv_freq: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f32, scaling: Option<RopeScaling>) -> RopeTable {
        let half = head_dim / 2;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        if let Some(s) = scaling {
            // Same rule as transformers' `_compute_llama3_parameters`.
            let old_ctx = s.original_max_position_embeddings as f32;
            let low_wavelen = old_ctx / s.low_freq_factor;
            let high_wavelen = old_ctx / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old_ctx / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        RopeTable { head_dim, inv_freq }
    }

    /// A table from explicit inverse frequencies (e.g. linear scaling,
    /// where every frequency is divided by the factor).
    pub fn from_inv_freq(head_dim: usize, inv_freq: Vec<f32>) -> RopeTable {
        RopeTable { head_dim, inv_freq }
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }
}
