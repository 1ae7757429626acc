//! A KV cache layer's keys kept in the layout the CPU attention kernel
//! reads: each whole block of 64 positions, per kv head, transposed.
//!
//! The kernel scores a block of keys from `K` transposed (`[d][key]`), and
//! the cache holds `K` as `[position][kv_head][d]`, so every call used to
//! transpose every block it visited: a decode step re-packed its
//! sequence's whole K cache, layer by layer. A cache that keeps its whole
//! blocks packed here ([`KeyBlocks::extend`] after it grows) lets a step
//! pack only its last, partial block. The blocks are copies of the keys,
//! so attention's bits are the same with them or without.
//!
//! CPU only: on a GPU [`KeyBlocks::extend`] keeps nothing.

use crate::error::shape_err;
use crate::{Result, Tensor, cpu};

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct KeyBlocks {
    kv_heads: usize,
    head_dim: usize,
    blocks: usize,
    data: Vec<f32>,
}

impl KeyBlocks {
    /// Positions a block covers.
    pub const POSITIONS: usize = cpu::KEY_BLOCK;

    /// None held.
    pub fn new() -> KeyBlocks {
        KeyBlocks::default()
    }

    /// Positions covered: the whole blocks held, from position 0.
    pub fn positions(&self) -> usize {
        self.blocks * Self::POSITIONS
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// Packs the whole blocks of `keys` (a layer's K chunks in position
    /// order from position 0, `[t_i, kv_heads, head_dim]` each) that are not
    /// held yet. The blocks held must have been packed from the same keys:
    /// a cache that drops positions calls [`KeyBlocks::truncate`] first. On
    /// keys that are not f32 on the CPU it holds nothing.
    pub fn extend(&mut self, keys: &[&Tensor]) -> Result<()> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let s = first.shape();
        if s.len() != 3 {
            return Err(shape_err("key_blocks", format!("key chunk {s:?}")));
        }
        let (kv_heads, head_dim) = (s[1], s[2]);
        let mut total = 0;
        for k in keys {
            let ks = k.shape();
            if ks.len() != 3 || ks[1] != kv_heads || ks[2] != head_dim {
                return Err(shape_err(
                    "key_blocks",
                    format!("key chunk {ks:?} beside {s:?}"),
                ));
            }
            if !k.device().is_cpu() || k.cpu().len() != k.len() {
                self.truncate(0);
                return Ok(());
            }
            total += ks[0];
        }
        if self.blocks > 0 && (kv_heads, head_dim) != (self.kv_heads, self.head_dim) {
            return Err(shape_err(
                "key_blocks",
                format!(
                    "keys of {kv_heads}×{head_dim} after blocks of {}×{}",
                    self.kv_heads, self.head_dim
                ),
            ));
        }
        if self.positions() > total {
            return Err(shape_err(
                "key_blocks",
                format!(
                    "{} positions held, the keys cover {total}",
                    self.positions()
                ),
            ));
        }
        let want = total / Self::POSITIONS;
        if want > self.blocks {
            let host: Vec<&[f32]> = keys.iter().map(|k| k.cpu()).collect();
            cpu::pack_key_blocks(&host, kv_heads, head_dim, self.blocks..want, &mut self.data);
            (self.kv_heads, self.head_dim, self.blocks) = (kv_heads, head_dim, want);
        }
        Ok(())
    }

    /// Drops the blocks that reach past position `len`.
    pub fn truncate(&mut self, len: usize) {
        self.blocks = self.blocks.min(len / Self::POSITIONS);
        let per = self.kv_heads * self.head_dim * Self::POSITIONS;
        self.data.truncate(self.blocks * per);
    }

    /// The packed data and the number of blocks, for the kernel.
    pub(crate) fn raw(&self) -> (&[f32], usize) {
        (&self.data, self.blocks)
    }

    /// Heads and head size of the blocks held (`(0, 0)` before any).
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.kv_heads, self.head_dim)
    }
}
