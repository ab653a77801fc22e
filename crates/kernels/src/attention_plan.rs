//! Which attention kernel an attention node runs on, with how many split-K blocks per query and
//! how much dynamic shared memory. Pure functions of the node's shapes, types and layouts and of
//! the backend's settings, so the routing is tested without a GPU.
//!
//! - `attention_f32`: any K/V type and head dim up to 512, one block per (head, query, split).
//! - `attention_f16_e8` / `_e16`: f16 K/V rows of 256 / 512 with 16-byte-aligned rows, same grid,
//!   16-byte loads (decode steps and verify batches); their `_g2` forms take two heads of one K/V
//!   group per block (grid x n_head / 2; batches of 4 queries or more, chosen at launch, same
//!   bits).
//! - `attention_tc_d256` / `_d512`: the same rows for up to [`MQ_MIN_QUERIES`] queries (decode
//!   steps and verify batches; the default there): tensor cores, a block per 8 (query, head) rows
//!   of one K/V group and one split, its 4 warps sharing each step's dims (grid
//!   [`AttentionKernel::grid`]); `attention_tc_d128` takes f16 rows of 128 (the DFlash
//!   drafter's heads) the same way, and longer batches of them the generic kernel.
//! - `attention_mq_d256` / `_d512`: the same rows for more than [`MQ_MIN_QUERIES`] queries
//!   (prefill chunks): one block per (head, [`MQ_ROWS`] queries, split) sharing each K/V tile.
//!
//! Up to 16 queries the kernel and the split count depend on the cache capacity and the row
//! layout only, never on the batch: a verify row must give a decode step's bits.

use graph::{DType, Layout};
use std::sync::OnceLock;

/// Queries one `attention_mq_*` block takes (`MQ_ROWS` in attention.cu).
pub(crate) const MQ_ROWS: usize = 16;
/// K/V positions per shared-memory tile of `attention_mq_*` (`MQ_POS` in attention.cu).
const MQ_POS: usize = 32;
/// Threads per `attention_mq_*` block (`MQ_THREADS` in attention.cu).
const MQ_THREADS: u32 = 256;
/// Batches of more queries than this take the multi-query kernel; up to it the tensor-core (or
/// per-query) kernels keep a verify row's arithmetic equal to a decode step's.
pub(crate) const MQ_MIN_QUERIES: usize = 16;
/// Warps per `attention_tc_*` block, which share each step of one unit (`TC_ATT_WARPS` in
/// attention_tc.cu).
const TC_WARPS: usize = 4;
/// (query, head) rows per `attention_tc_*` unit (`TC_ATT_ROWS` in attention_tc.cu).
const TC_ROWS: usize = 8;

/// An attention kernel and its launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttentionKernel {
    /// `attention_f32`.
    Generic,
    /// `attention_f16_e8` (head dim 256) or `attention_f16_e16` (512).
    Wide { d: usize },
    /// `attention_mq_d256` or `attention_mq_d512`.
    MultiQuery { d: usize },
    /// `attention_tc_d128`, `attention_tc_d256` or `attention_tc_d512`.
    TensorCore { d: usize },
}

impl AttentionKernel {
    /// The entry point's name.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKernel::Generic => "attention_f32",
            AttentionKernel::Wide { d: 256 } => "attention_f16_e8",
            AttentionKernel::Wide { .. } => "attention_f16_e16",
            AttentionKernel::MultiQuery { d: 256 } => "attention_mq_d256",
            AttentionKernel::MultiQuery { .. } => "attention_mq_d512",
            AttentionKernel::TensorCore { d: 128 } => "attention_tc_d128",
            AttentionKernel::TensorCore { d: 256 } => "attention_tc_d256",
            AttentionKernel::TensorCore { .. } => "attention_tc_d512",
        }
    }

    /// Threads per block.
    pub fn threads(self) -> u32 {
        match self {
            AttentionKernel::MultiQuery { .. } => MQ_THREADS,
            AttentionKernel::TensorCore { .. } => (TC_WARPS * 32) as u32,
            _ => 128,
        }
    }

    /// Blocks along the query axis for `n_tok` queries.
    pub fn query_blocks(self, n_tok: usize) -> usize {
        match self {
            AttentionKernel::MultiQuery { .. } => n_tok.div_ceil(MQ_ROWS),
            _ => n_tok,
        }
    }

    /// Dynamic shared memory per block in bytes.
    pub fn smem_bytes(self) -> usize {
        match self {
            AttentionKernel::MultiQuery { d } => mq_smem_bytes(d),
            _ => 0,
        }
    }

    /// The launch grid for `n_tok` queries of `n_head` heads over `n_head_kv` K/V heads in
    /// `n_split` splits: (heads, query blocks, splits) for the per-query and multi-query
    /// kernels; for the tensor-core kernel (K/V heads, row tiles × slots), a row tile being
    /// [`TC_ROWS`] (query, head) rows of one K/V group, whose block walks the splits of its slot
    /// ([`tc_slots`]: every split a block, unless that passes `max_blocks`).
    pub fn grid(
        self,
        n_head: usize,
        n_head_kv: usize,
        n_tok: usize,
        n_split: usize,
        max_blocks: usize,
    ) -> (u32, u32, u32) {
        match self {
            AttentionKernel::TensorCore { .. } => {
                let rows = n_tok * (n_head / n_head_kv.max(1));
                let tiles = rows.div_ceil(TC_ROWS);
                let slots = tc_slots(n_head_kv * tiles, n_split, max_blocks);
                (n_head_kv as u32, (tiles * slots) as u32, 1)
            }
            _ => (
                n_head as u32,
                self.query_blocks(n_tok) as u32,
                n_split as u32,
            ),
        }
    }
}

/// Split slots of a tensor-core attention whose splits have `per_split` blocks each: `n_split`
/// (a block per unit) unless that passes `max_blocks` (0: no bound), else the fewest slots that
/// walk the splits in as few rounds as the bound allows (each slot walks that many splits, or
/// one fewer). A block loads its queries once and stops at the first split past its rows' used
/// ones, so a short context over a long cache (the DFlash drafter's: 6 of 64 splits used) costs
/// no launch of empty blocks.
pub(crate) fn tc_slots(per_split: usize, n_split: usize, max_blocks: usize) -> usize {
    let n_split = n_split.max(1);
    if max_blocks == 0 || per_split * n_split <= max_blocks {
        return n_split;
    }
    let most = (max_blocks / per_split.max(1)).max(1);
    n_split.div_ceil(n_split.div_ceil(most))
}

/// Dynamic shared memory of `attention_mq_d<d>`: the K and V tiles (f16 rows padded by 8) and
/// the block's queries (f32).
pub(crate) fn mq_smem_bytes(d: usize) -> usize {
    2 * MQ_POS * (d + 8) * 2 + MQ_ROWS * d * 4
}

/// Which batches take the multi-query attention kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultiQueryAttention {
    /// None (`SPECULA_MQ_ATTENTION=0`): the per-query kernels everywhere.
    Off,
    /// Batches of more than 16 queries (prefill chunks); decode steps and verify batches keep
    /// the per-query kernels (the default).
    LongBatches,
    /// Every batch, decode steps included (`SPECULA_MQ_ATTENTION=all`): a query's arithmetic
    /// does not depend on its batch in this kernel either, so verify rows keep the decode
    /// step's bits.
    Every,
}

impl MultiQueryAttention {
    /// The setting of `SPECULA_MQ_ATTENTION` (`0`, `all`, or anything else for the default).
    pub fn from_env() -> MultiQueryAttention {
        match std::env::var("SPECULA_MQ_ATTENTION").as_deref() {
            Ok("0") => MultiQueryAttention::Off,
            Ok("all") => MultiQueryAttention::Every,
            _ => MultiQueryAttention::LongBatches,
        }
    }
}

/// The backend's settings that decide the route.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionConfig {
    /// f16 rows of 256/512 that neither the tensor-core nor the multi-query kernels take run on
    /// the wide kernels (`SPECULA_WIDE_ATTENTION=0` turns them off).
    pub wide: bool,
    /// Which batches take the multi-query kernels.
    pub multi_query: MultiQueryAttention,
    /// Batches of up to 16 queries over f16 rows of 128/256/512 take the tensor-core kernels
    /// (`SPECULA_ATT_TC=0` turns them off: the wide kernels, or the generic one at 128; an A/B
    /// knob).
    pub tensor_core: bool,
    /// The device's opt-in shared memory per block (bytes).
    pub max_smem: usize,
}

/// What the route depends on: K/V types and layouts, head dims, and the number of queries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionShape<'a> {
    /// K and V element types.
    pub k_dtype: DType,
    /// V element type.
    pub v_dtype: DType,
    /// K and V layouts.
    pub k_layout: &'a Layout,
    /// V layout.
    pub v_layout: &'a Layout,
    /// Head dim of Q/K.
    pub d: usize,
    /// Head dim of V.
    pub d_v: usize,
    /// Queries in the batch.
    pub n_tok: usize,
}

/// The kernel an attention of `shape` runs on.
pub(crate) fn choose(cfg: &AttentionConfig, shape: &AttentionShape) -> AttentionKernel {
    // 16-byte-aligned rows of f16: offsets and strides in whole 8-element groups.
    let aligned = |l: &Layout| {
        l.offset.is_multiple_of(8)
            && l.strides[1].is_multiple_of(8)
            && l.strides[2].is_multiple_of(8)
    };
    let f16_rows = shape.k_dtype == DType::F16
        && shape.v_dtype == DType::F16
        && shape.d == shape.d_v
        && matches!(shape.d, 128 | 256 | 512)
        && aligned(shape.k_layout)
        && aligned(shape.v_layout);
    if !f16_rows {
        return AttentionKernel::Generic;
    }
    let d = shape.d;
    // Rows of 128 have only the tensor-core kernel: batches of up to 16 queries (so a verify
    // row still gets the decode step's kernel), the generic one beyond.
    if d == 128 {
        return if cfg.tensor_core && shape.n_tok <= MQ_MIN_QUERIES {
            AttentionKernel::TensorCore { d }
        } else {
            AttentionKernel::Generic
        };
    }
    let batch = match cfg.multi_query {
        MultiQueryAttention::Off => false,
        MultiQueryAttention::LongBatches => shape.n_tok > MQ_MIN_QUERIES,
        MultiQueryAttention::Every => true,
    };
    if batch && mq_smem_bytes(d) <= cfg.max_smem {
        AttentionKernel::MultiQuery { d }
    } else if cfg.tensor_core && shape.n_tok <= MQ_MIN_QUERIES {
        AttentionKernel::TensorCore { d }
    } else if cfg.wide {
        AttentionKernel::Wide { d }
    } else {
        AttentionKernel::Generic
    }
}

/// A power of two in `lo..=hi` from the environment variable `name`, read once into `cell`, or
/// `default` (the attention split knobs below).
fn pow2_knob(cell: &OnceLock<usize>, name: &str, lo: usize, hi: usize, default: usize) -> usize {
    *cell.get_or_init(|| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|r| r.is_power_of_two() && (lo..=hi).contains(r))
            .unwrap_or(default)
    })
}

/// Cache rows per split of attentions of up to 16 queries: 128, or `SPECULA_ATT_SPLIT_ROWS`
/// (a power of two from 16 to 4096; an A/B knob). It sets the sliding layers' splits (a
/// 1,040-row ring: 8 splits); full-attention caches take the cap from 4K rows on the per-query
/// kernels ([`FILL_SPLITS`]) and from 8K on tensor cores ([`max_splits`]). On an
/// H200 (31B decode at depth 4K / 32K, tok/s, and t(16) at 4K against 256): 256 rows 61.3 /
/// 53.5; 128 rows 64.3 / 55.8, t(16) +1 %; 64 rows 64.9 / 56.3, t(16) +5 % (bench/NOTES.md).
pub(crate) fn split_rows() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    pow2_knob(&ROWS, "SPECULA_ATT_SPLIT_ROWS", 16, 4096, 128)
}

/// Most splits of the tensor-core kernel's attentions (up to 16 queries): 64, or
/// `SPECULA_ATT_MAX_SPLITS` (a power of two from 1 to 256; an A/B knob). A query uses at most
/// [`FILL_SPLITS`] of them until its visible range passes 16K rows, then one per 512
/// (`visible_range` in attention.cu): at depth 32K, 32 splits left one block per multiprocessor
/// walking 32 steps in order. The per-query kernels keep [`FILL_SPLITS`]: their empty blocks
/// are not free (a DFlash block draft, 16 queries of the generic kernel, took 7 % longer with 64).
pub(crate) fn max_splits() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    pow2_knob(&MAX, "SPECULA_ATT_MAX_SPLITS", 1, COMBINE_MAX_SPLITS, 64)
}

/// Most splits `attention_combine_f32` merges: the device's `ATT_COMBINE_MAX_SPLITS`
/// (attention.cu, its shared arrays), which this must equal; no plan exceeds it.
pub(crate) const COMBINE_MAX_SPLITS: usize = 256;

/// Splits a query uses whatever its visible range until that passes 16K rows: the device's
/// `ATT_FILL_SPLITS` (attention.cu), which this must equal.
pub(crate) const FILL_SPLITS: usize = 32;

/// Number of blocks each (head, query) of an attention on route `kernel` is split into over the
/// K/V positions. Up to 16 queries (decode steps and verify batches) it depends on the cache
/// capacity and the route only (one split per [`split_rows`] rows, at most [`max_splits`] on
/// tensor cores and [`FILL_SPLITS`] otherwise), so a query's arithmetic is the same whatever
/// batch it is in and a verify row equals the decode step; short splits also keep enough blocks
/// in flight (a 9-query verify at depth 4K ran one block per (head, query) before). Longer
/// batches (prefill chunks) split only to fill the GPU (264 blocks of the route's
/// [`AttentionKernel::query_blocks`] per head), at least 512 rows per split.
pub(crate) fn attention_splits(
    n_head: usize,
    n_tok: usize,
    kernel: AttentionKernel,
    cap: usize,
) -> usize {
    if n_tok <= MQ_MIN_QUERIES {
        let most = match kernel {
            AttentionKernel::TensorCore { .. } => max_splits(),
            _ => FILL_SPLITS,
        };
        return (cap / split_rows()).clamp(1, most);
    }
    let blocks = n_head * kernel.query_blocks(n_tok);
    let fill = 264usize.div_ceil(blocks.max(1));
    fill.min(cap / 512).clamp(1, FILL_SPLITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use graph::Shape;

    fn layout(d: usize, heads: usize, rows: usize) -> Layout {
        Layout::contiguous(Shape::new(&[d, heads, rows]).unwrap())
    }

    fn cfg() -> AttentionConfig {
        AttentionConfig {
            wide: true,
            multi_query: MultiQueryAttention::LongBatches,
            tensor_core: false,
            max_smem: 227 * 1024,
        }
    }

    fn shape<'a>(l: &'a Layout, dtype: DType, d: usize, n_tok: usize) -> AttentionShape<'a> {
        AttentionShape {
            k_dtype: dtype,
            v_dtype: dtype,
            k_layout: l,
            v_layout: l,
            d,
            d_v: d,
            n_tok,
        }
    }

    #[test]
    fn batches_up_to_16_queries_keep_the_decode_kernel() {
        let l = layout(256, 16, 4096);
        for n_tok in 1..=16 {
            assert_eq!(
                choose(&cfg(), &shape(&l, DType::F16, 256, n_tok)),
                AttentionKernel::Wide { d: 256 }
            );
            // The split count depends on the cache rows and the route only, never on the batch.
            for kernel in [
                AttentionKernel::Wide { d: 256 },
                AttentionKernel::TensorCore { d: 256 },
                AttentionKernel::Generic,
            ] {
                for cap in [100, 1040, 4096, 32768 + 64] {
                    assert_eq!(
                        attention_splits(32, n_tok, kernel, cap),
                        attention_splits(32, 1, kernel, cap)
                    );
                }
            }
        }
        let (tc, wide) = (
            AttentionKernel::TensorCore { d: 256 },
            AttentionKernel::Wide { d: 256 },
        );
        if std::env::var_os("SPECULA_ATT_SPLIT_ROWS").is_none()
            && std::env::var_os("SPECULA_ATT_MAX_SPLITS").is_none()
        {
            // A sliding layer's ring of 1,040 rows: 8 splits; 4K rows: 32; 32K rows: the cap
            // of 64 (a query uses more than 32 only past 16K visible rows: visible_range).
            assert_eq!(attention_splits(32, 1, tc, 1040), 8);
            assert_eq!(attention_splits(32, 1, tc, 4096), 32);
            assert_eq!(attention_splits(32, 1, tc, 32768 + 64), 64);
            assert_eq!(attention_splits(32, 1, tc, 100), 1);
            // The per-query kernels stop at 32 (their empty blocks cost).
            assert_eq!(attention_splits(32, 1, wide, 32768 + 64), 32);
            assert_eq!(attention_splits(32, 1, wide, 1040), 8);
        }
        assert_eq!(
            choose(&cfg(), &shape(&l, DType::F16, 256, 17)),
            AttentionKernel::MultiQuery { d: 256 }
        );
    }

    #[test]
    fn tensor_cores_take_decode_and_verify_batches() {
        let tc = AttentionConfig {
            tensor_core: true,
            ..cfg()
        };
        for d in [256, 512] {
            let l = layout(d, 4, 4096);
            for n_tok in 1..=16 {
                assert_eq!(
                    choose(&tc, &shape(&l, DType::F16, d, n_tok)),
                    AttentionKernel::TensorCore { d }
                );
            }
            assert_eq!(
                choose(&tc, &shape(&l, DType::F16, d, 17)),
                AttentionKernel::MultiQuery { d }
            );
            assert_eq!(
                choose(&tc, &shape(&l, DType::F32, d, 1)),
                AttentionKernel::Generic
            );
        }
        // Rows of 128 (the DFlash drafter's): tensor cores up to 16 queries, generic beyond
        // (no wide or multi-query kernel of that width), and generic with tensor cores off.
        let l = layout(128, 8, 2048);
        for n_tok in 1..=16 {
            assert_eq!(
                choose(&tc, &shape(&l, DType::F16, 128, n_tok)),
                AttentionKernel::TensorCore { d: 128 }
            );
            assert_eq!(
                choose(&cfg(), &shape(&l, DType::F16, 128, n_tok)),
                AttentionKernel::Generic
            );
        }
        assert_eq!(
            choose(&tc, &shape(&l, DType::F16, 128, 17)),
            AttentionKernel::Generic
        );
        assert_eq!(
            AttentionKernel::TensorCore { d: 128 }.name(),
            "attention_tc_d128"
        );
        let k = AttentionKernel::TensorCore { d: 256 };
        // 32 heads over 16 K/V heads (2 per group): a decode step is one unit (block) per
        // split; 16 queries are 4 units per split.
        assert_eq!(k.grid(32, 16, 1, 8, 1056), (16, 8, 1));
        assert_eq!(k.grid(32, 16, 16, 8, 1056), (16, 32, 1));
        // 8 heads per group: 16 queries are 16 units per split; 3 heads: 5 queries, 2 units.
        assert_eq!(k.grid(32, 4, 16, 32, 0), (4, 512, 1));
        assert_eq!(k.grid(12, 4, 5, 3, 1056), (4, 6, 1));
        // Past the bound, blocks walk several splits: 64 splits of 64 blocks under 1,056
        // blocks are 16 slots of 4 splits each.
        assert_eq!(k.grid(32, 4, 16, 64, 1056), (4, 16 * 16, 1));
        assert_eq!(
            AttentionKernel::Wide { d: 256 }.grid(32, 16, 5, 8, 1056),
            (32, 5, 8)
        );
    }

    #[test]
    fn tensor_core_slots_bound_the_blocks_evenly() {
        // Under the bound (or none): a block per split.
        assert_eq!(tc_slots(16, 8, 1056), 8);
        assert_eq!(tc_slots(128, 64, 0), 64);
        // The DFlash block (8 K/V heads × 16 row tiles, 64 splits): 8 slots of 8 splits.
        assert_eq!(tc_slots(128, 64, 1056), 8);
        // 70 blocks a split: at most 15 slots under 1,056 blocks, so 64 splits take 5 walks,
        // evened out as 13 slots (not 15 slots whose last walk has 4 of them busy).
        assert_eq!(tc_slots(70, 64, 1056), 13);
        // One split a slot at least, however many blocks a split has.
        assert_eq!(tc_slots(4096, 64, 1056), 1);
        for per in [1usize, 3, 64, 128, 500] {
            for n in [1usize, 2, 7, 64, 256] {
                let s = tc_slots(per, n, 1056);
                assert!((1..=n).contains(&s));
                assert!(s == n || per * s <= 1056, "{per} {n} {s}");
                // As few walks as the bound allows.
                let most = (1056 / per).clamp(1, n);
                assert_eq!(n.div_ceil(s), n.div_ceil(most), "{per} {n} {s}");
            }
        }
    }

    #[test]
    fn every_batch_or_none_on_request() {
        let l = layout(256, 16, 4096);
        for (mode, one, long) in [
            (
                MultiQueryAttention::Off,
                AttentionKernel::Wide { d: 256 },
                AttentionKernel::Wide { d: 256 },
            ),
            (
                MultiQueryAttention::Every,
                AttentionKernel::MultiQuery { d: 256 },
                AttentionKernel::MultiQuery { d: 256 },
            ),
        ] {
            let c = AttentionConfig {
                multi_query: mode,
                ..cfg()
            };
            assert_eq!(choose(&c, &shape(&l, DType::F16, 256, 1)), one);
            assert_eq!(choose(&c, &shape(&l, DType::F16, 256, 512)), long);
        }
    }

    #[test]
    fn the_multi_query_kernel_needs_f16_rows_and_shared_memory() {
        let l = layout(512, 4, 4096);
        assert_eq!(
            choose(&cfg(), &shape(&l, DType::F16, 512, 512)),
            AttentionKernel::MultiQuery { d: 512 }
        );
        assert_eq!(
            choose(&cfg(), &shape(&l, DType::F32, 512, 512)),
            AttentionKernel::Generic
        );
        let small = AttentionConfig {
            max_smem: mq_smem_bytes(512) - 1,
            ..cfg()
        };
        assert_eq!(
            choose(&small, &shape(&l, DType::F16, 512, 512)),
            AttentionKernel::Wide { d: 512 }
        );
        let l128 = layout(128, 4, 4096);
        assert_eq!(
            choose(&cfg(), &shape(&l128, DType::F16, 128, 512)),
            AttentionKernel::Generic
        );
        let mut odd = layout(256, 4, 4096);
        odd.offset = 4;
        assert_eq!(
            choose(&cfg(), &shape(&odd, DType::F16, 256, 512)),
            AttentionKernel::Generic
        );
        // Shared memory fits an sm_86 block (99 KB) at the largest head dim.
        assert!(mq_smem_bytes(512) <= 99 * 1024);
    }

    #[test]
    fn the_split_limits_match_the_kernels() {
        for define in [
            format!("#define ATT_FILL_SPLITS {FILL_SPLITS}\n"),
            format!("#define ATT_COMBINE_MAX_SPLITS {COMBINE_MAX_SPLITS}\n"),
        ] {
            assert!(
                crate::source::ATTENTION.contains(&define),
                "attention.cu lacks {define}"
            );
        }
    }

    #[test]
    fn prefill_splits_fill_the_gpu_by_the_routes_blocks() {
        let mq = AttentionKernel::MultiQuery { d: 256 };
        // 32 heads × 32 blocks of 16 queries: no split.
        assert_eq!(attention_splits(32, 512, mq, 4096), 1);
        // 32 heads × 4 blocks: 3 splits where the cache allows.
        assert_eq!(attention_splits(32, 64, mq, 4096), 3);
        assert_eq!(attention_splits(32, 64, mq, 1024), 2);
        assert_eq!(attention_splits(2, 20, mq, 4096), 8);
        assert_eq!(attention_splits(2, 20, mq, 100), 1);
        // The per-query kernels already run a block per query: 8 heads × 32 queries fill it.
        let per_query = AttentionKernel::Generic;
        assert_eq!(attention_splits(8, 32, per_query, 4096), 2);
        assert_eq!(attention_splits(32, 32, per_query, 4096), 1);
    }
}
