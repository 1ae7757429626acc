//! Timing the parts of a profiled forward pass (dense layers, attention,
//! the rest) for `cake bench prefill`.

use cake_kernels::Device;

/// Where a forward pass spent its time (filled by
/// [`super::Model::forward_profiled`]; the CPU backend runs ops synchronously, so
/// wall time around each op is that op's time).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Profile {
    /// Seconds in the dense layers (Q, K, V, O projections and the MLP).
    pub dense_s: f64,
    /// Floating-point operations of those dense layers.
    pub dense_flops: f64,
    /// Seconds in attention.
    pub attention_s: f64,
    /// Seconds in everything else (norms, RoPE, activations, residuals).
    pub other_s: f64,
}

/// Where a lap's time goes.
#[derive(Clone, Copy)]
pub(super) enum Part {
    Dense,
    Attention,
    Other,
}

/// Times the parts of a profiled forward with device marks: instants on
/// the CPU, events on a GPU's compute stream (GPU time of the ops between
/// two marks, no synchronisation while the forward runs). Does nothing
/// unless profiling.
pub(super) struct Timer<'a> {
    prof: Option<&'a mut Profile>,
    device: Device,
    marks: Vec<(cake_kernels::Mark, Part)>,
    start: Option<cake_kernels::Mark>,
}

impl<'a> Timer<'a> {
    pub(super) fn new(prof: Option<&'a mut Profile>, device: Device) -> Timer<'a> {
        let start = if prof.is_some() {
            device.mark().ok()
        } else {
            None
        };
        Timer {
            prof,
            device,
            marks: Vec::new(),
            start,
        }
    }

    /// The ops since the last lap were `part`.
    pub(super) fn lap(&mut self, part: Part) {
        if self.prof.is_some()
            && let Ok(m) = self.device.mark()
        {
            self.marks.push((m, part));
        }
    }

    /// Adds the laps to the profile (waits for the device).
    pub(super) fn finish(self, dense_flops: f64) {
        let (Some(p), Some(mut prev)) = (self.prof, self.start) else {
            return;
        };
        for (m, part) in self.marks {
            let secs = match m.seconds_since(&prev) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "profiling mark failed");
                    0.0
                }
            };
            match part {
                Part::Dense => p.dense_s += secs,
                Part::Attention => p.attention_s += secs,
                Part::Other => p.other_s += secs,
            }
            prev = m;
        }
        p.dense_flops += dense_flops;
    }
}
