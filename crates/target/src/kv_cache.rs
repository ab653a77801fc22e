//! The target's KV cache: one K and one V state per layer that owns K/V.
//!
//! Full-attention layers store position `p` in row `p` (linear, `n_ctx` rows). Sliding-window
//! layers use a ring of `window + max_batch` rows, position `p` in row `p % ring`: large enough
//! that a verify batch of up to `max_batch` tokens, even when rejected and rolled back, never
//! overwrites a key a committed query can still see. Truncation (speculative rollback) only
//! moves the committed length: O(1).

use graph::{Backend, BufferId, DType, Shape};

use crate::config::Gemma4Config;
use crate::error::{Error, Result};

/// K and V states of one layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerKv {
    /// K rows, `[head_dim · n_head_kv, rows]`.
    pub k: BufferId,
    /// V rows, `[head_dim · n_head_kv, rows]`.
    pub v: BufferId,
    /// Number of rows.
    pub rows: usize,
    /// Whether rows form a ring (sliding layers) or map positions one to one.
    pub ring: bool,
}

/// The KV cache of one sequence.
#[derive(Debug)]
pub struct KvCache {
    n_ctx: usize,
    ring: usize,
    dtype: DType,
    layers: Vec<Option<LayerKv>>,
    n_past: usize,
}

impl KvCache {
    /// Allocates zeroed states for every K/V-owning layer.
    pub fn new(
        config: &Gemma4Config,
        backend: &mut dyn Backend,
        n_ctx: usize,
        max_batch: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        if n_ctx == 0 || max_batch == 0 {
            return Err(Error::Input(
                "context length and batch size must be positive".into(),
            ));
        }
        let ring = (config.sliding_window + max_batch).min(n_ctx.max(1));
        let mut layers = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            if l >= config.first_kv_shared() {
                layers.push(None);
                continue;
            }
            let row = config.head_dim(l) * config.n_head_kv[l];
            let sliding = config.is_sliding[l];
            let rows = if sliding { ring } else { n_ctx };
            let shape = Shape::new(&[row, rows])?;
            let k = backend.alloc(dtype, shape)?;
            let v = backend.alloc(dtype, shape)?;
            layers.push(Some(LayerKv {
                k,
                v,
                rows,
                ring: sliding,
            }));
        }
        Ok(KvCache {
            n_ctx,
            ring,
            dtype,
            layers,
            n_past: 0,
        })
    }

    /// Bytes the cache of `config` takes for `n_ctx` positions and batches of `max_batch`.
    pub fn planned_bytes(
        config: &Gemma4Config,
        n_ctx: usize,
        max_batch: usize,
        dtype: DType,
    ) -> u64 {
        let ring = (config.sliding_window + max_batch).min(n_ctx.max(1));
        let elem = dtype.bytes_for(1).unwrap_or(4);
        (0..config.first_kv_shared())
            .map(|l| {
                let rows = if config.is_sliding[l] { ring } else { n_ctx };
                2 * (config.head_dim(l) * config.n_head_kv[l] * rows) as u64 * elem
            })
            .sum()
    }

    /// Maximum number of positions.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Rows of the sliding-layer ring.
    pub fn ring(&self) -> usize {
        self.ring
    }

    /// Element type of the states.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Committed positions.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// The states of layer `l` (`None` for KV-shared layers).
    pub fn layer(&self, l: usize) -> Option<LayerKv> {
        self.layers.get(l).copied().flatten()
    }

    /// Rows to write positions `start..start + n` into: (sliding ring rows, full rows).
    pub fn slots(&self, start: usize, n: usize) -> Result<(Vec<i32>, Vec<i32>)> {
        if start + n > self.n_ctx {
            return Err(Error::Input(format!(
                "context of {} tokens exceeds the maximum of {} positions",
                start + n,
                self.n_ctx
            )));
        }
        let swa = (start..start + n).map(|p| (p % self.ring) as i32).collect();
        let full = (start..start + n).map(|p| p as i32).collect();
        Ok((swa, full))
    }

    /// Marks `n` more positions as written.
    pub(crate) fn advance(&mut self, n: usize) {
        self.n_past += n;
    }

    /// Drops every position from `n` on (rollback of rejected drafts).
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.n_past {
            return Err(Error::Input(format!(
                "cannot truncate to {n}: only {} positions are committed",
                self.n_past
            )));
        }
        self.n_past = n;
        Ok(())
    }
}
