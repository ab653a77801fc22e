//! Which matrix products the tensor-core `_mma_` kernels take, and, per loaded graph, who
//! prepares their activations: `mmv_prepare_x` before a product, the RMSNorm kernel that produced
//! them, or nobody because the previous product of the same input already did (q, then k and v).
//! Pure functions of the graph and the backend's settings, so the plan is tested without a GPU.

use std::collections::{HashMap, HashSet};

use graph::{DType, Graph, Layout, Node, NodeId, Op};

use crate::source;

/// The backend's settings that decide the `_mma_` route.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MmaConfig {
    /// The `_mma_` kernels are on (compute capability ≥ 8.0 and `SPECULA_MMA` not 0).
    pub enabled: bool,
    /// Products of more than 16 activation rows take them too (`SPECULA_MMA_PREFILL`).
    pub prefill: bool,
    /// Forced weight tiles per warp (`SPECULA_MMA_MT`).
    pub mt: Option<usize>,
    /// Products of more than 16 activation rows give each warp of a block its own weight rows
    /// (`kw` = 1), so the 8 warps share every activation load from L1, instead of splitting one
    /// row's groups between them as batches up to 16 rows do (`SPECULA_MMA_PREFILL_SPLITK=1`
    /// restores that, an A/B knob). Prefill rows need not match any decode row's bits.
    pub prefill_row_warps: bool,
    /// Tile `(MT, NT)` of products of more than 16 activation rows, if not
    /// [`source::mma_prefill_tile`]'s (`SPECULA_MMA_PREFILL_TILE=MxN`: 2x2 or one of
    /// [`source::MMA_PREFILL_TILES`]).
    pub prefill_tile: Option<(usize, usize)>,
    /// Tile `(MT, NT)` of products of 9–16 rows (verify batches), if not [`source::mma_tile`]'s
    /// (`SPECULA_MMA_VERIFY_TILE=1x1|1x2|2x2`, tuning; no tile changes a row's bits).
    pub verify_tile: Option<(usize, usize)>,
    /// Forces every product to prepare (`Some(true)`) or to split in place (`Some(false)`).
    pub force_prepare: Option<bool>,
    /// Products of at least [`source::GEMM_MIN_ROWS`] rows take the GEMM route (cuBLAS loaded,
    /// `SPECULA_GEMM` not 0) instead of the `_mma_` or `matmul_tc_` kernels.
    pub gemm: bool,
    /// Bytes of the GEMM route's f16 weight scratch ([`source::GEMM_WEIGHT_SCRATCH_BYTES`];
    /// tests make it small to run several row tiles).
    pub gemm_weight_bytes: usize,
    /// Prepared Q4_K products of at most [`source::LIMB_MAX_ROWS`] rows take the exact-integer
    /// `matmul_q4_k_limb_n*` kernels instead of the `_mma_` ones (`SPECULA_Q4K_LIMBS=1`; off by
    /// default: faster at 1–2 rows, slower from 5, bench/NOTES.md).
    pub q4k_limbs: bool,
    /// The device's multiprocessors (the q8 products' tiling fills their block slots).
    pub sm_count: usize,
    /// Forced split-K blocks of the q8 products (`SPECULA_Q8_SPLITS`).
    pub q8_splits: Option<usize>,
}

impl Default for MmaConfig {
    /// A tensor-core device's settings with no `SPECULA_MMA*` variable set.
    fn default() -> Self {
        MmaConfig {
            enabled: true,
            prefill: true,
            mt: None,
            prefill_row_warps: true,
            prefill_tile: None,
            verify_tile: None,
            force_prepare: None,
            gemm: true,
            gemm_weight_bytes: source::GEMM_WEIGHT_SCRATCH_BYTES,
            q4k_limbs: false,
            sm_count: 132,
            q8_splits: None,
        }
    }
}

/// The activations of a product that the `_mma_` kernels take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MmaInput {
    /// The activation node.
    pub x: NodeId,
    /// Element offset of the first row in the node's storage.
    pub offset: i64,
    /// Elements between consecutive rows.
    pub stride: i64,
    /// Row width (weights per output row).
    pub k: usize,
    /// Activation rows.
    pub m: usize,
    /// The kernel's (weight tiles per warp, activation tiles per block) for `m` rows.
    pub tile: (usize, usize),
    /// Warps of a block that split one weight row's groups (`kw`; the block's other warps take
    /// further rows).
    pub k_warps: usize,
    /// Whether the product prepares its activations when they are not there already
    /// (`source::mma_prepares`, or the override).
    pub prepared: bool,
    /// Whether the product takes the `matmul_q4_k_limb_n*` kernels when it reads prepared
    /// activations (Q4_K weights, at most [`source::LIMB_MAX_ROWS`] rows, `q4k_limbs` on).
    pub limbs: bool,
}

impl MmaInput {
    /// Whether `other` reads the same activation rows.
    pub fn same_input(&self, other: &MmaInput) -> bool {
        (self.x, self.offset, self.stride, self.k, self.m)
            == (other.x, other.offset, other.stride, other.k, other.m)
    }

    /// Bytes of the prepared layout: 4 per activation (hi and lo f16) and 4 per 8 (Q4_K sums);
    /// batches of at most [`source::LIMB_MAX_ROWS`] rows room for 4 limbs and their lane sums (5
    /// per activation), one f32 scale per row and group (written where a limb product reads
    /// them, [`MmaPlan::limb_writers`]) and [`source::LIMB_PAD_BYTES`] of padding.
    pub fn prepared_bytes(&self) -> usize {
        let limbs = if self.m <= source::LIMB_MAX_ROWS {
            self.m * self.k * 5 + self.m * self.k / 256 * 4 + source::LIMB_PAD_BYTES
        } else {
            0
        };
        self.m * self.k * 4 + self.m * self.k / 2 + limbs
    }
}

/// A product on the GEMM route: its activation rows and sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemmInput {
    /// The activation node.
    pub x: NodeId,
    /// Element offset of the first activation row in the input's storage.
    pub offset: i64,
    /// Elements between consecutive activation rows.
    pub stride: i64,
    /// Row width (weights per output row).
    pub k: usize,
    /// Output rows (weight rows).
    pub n: usize,
    /// Activation rows.
    pub m: usize,
    /// Weight rows dequantized per GEMM: all of them, or as many as the weight scratch holds as
    /// f16 (a multiple of 256, at least 256).
    pub tile_rows: usize,
}

impl GemmInput {
    /// Whether `other` reads the same activation rows.
    pub fn same_input(&self, other: &GemmInput) -> bool {
        (self.x, self.offset, self.stride, self.k, self.m)
            == (other.x, other.offset, other.stride, other.k, other.m)
    }
}

/// The activations of matmul `node` if it takes the GEMM route: `cfg.gemm`, at least
/// [`source::GEMM_MIN_ROWS`] uniformly spaced activation rows, and block-quantized or f16 weights
/// (f32 and bf16 weights keep the f32-accurate kernels: rounding them to f16 would lose
/// precision or range).
pub(crate) fn gemm_input(cfg: &MmaConfig, g: &Graph, node: &Node) -> Option<GemmInput> {
    if !matches!(node.op, Op::MatMul) || !cfg.gemm {
        return None;
    }
    let (w, x) = (g.node(node.inputs[0]), g.node(node.inputs[1]));
    let typed = source::gemm_weight_type(w.dtype);
    let m = x.shape().n_rows();
    let stride = uniform_row_stride(&x.layout)?;
    let (k, n) = (w.shape().ne(0), w.shape().ne(1));
    let rows = m >= source::GEMM_MIN_ROWS && x.dtype == DType::F32;
    let fit = cfg.gemm_weight_bytes / (2 * k.max(1));
    let sized = k > 0 && n > 0 && k % 32 == 0;
    (typed && sized && rows).then(|| GemmInput {
        x: node.inputs[1],
        offset: x.layout.offset as i64,
        stride,
        k,
        n,
        m,
        tile_rows: n.min((fit / 256 * 256).max(256)),
    })
}

/// The activations of matmul `node` if the `_mma_` kernels take it: Q4_K, Q6_K or Q8_0 rows of
/// whole 256-weight groups, 16-byte aligned; more than 16 activation rows (prefill) only with
/// `cfg.prefill`; at most 65,535 blocks of weight rows (grid y).
pub(crate) fn mma_input(cfg: &MmaConfig, g: &Graph, node: &Node) -> Option<MmaInput> {
    if !matches!(node.op, Op::MatMul) || !cfg.enabled || gemm_input(cfg, g, node).is_some() {
        return None;
    }
    let (w, x) = (g.node(node.inputs[0]), g.node(node.inputs[1]));
    let (k, n) = (w.shape().ne(0), w.shape().ne(1));
    let stride = uniform_row_stride(&x.layout)?;
    let m = x.shape().n_rows();
    let fits = m <= source::MMA_MAX_ROWS || cfg.prefill;
    let (mt, nt) = if m > source::MMA_MAX_ROWS {
        cfg.prefill_tile
            .unwrap_or_else(|| source::mma_prefill_tile(w.dtype))
    } else if m > 8 {
        cfg.verify_tile
            .unwrap_or_else(|| source::mma_tile(m, w.dtype))
    } else {
        source::mma_tile(m, w.dtype)
    };
    let mt = cfg.mt.unwrap_or(mt);
    let limbs = cfg.q4k_limbs && w.dtype == DType::Q4_K && m <= source::LIMB_MAX_ROWS;
    let k_warps = if m > source::MMA_MAX_ROWS && cfg.prefill_row_warps {
        1
    } else {
        source::mma_k_warps(k)
    };
    // The kernels split a row's groups over k_warps of a block's 8 warps, and the persistent
    // walks find a warp's share with a mask (PersistWalk::slice; `k_warps_divide_a_block`).
    debug_assert!(k_warps.is_power_of_two() && k_warps <= 8);
    // The limb kernels take one weight tile per warp whatever `mt` (checked for both routes: a
    // limb product that does not read prepared activations runs the `_mma_` one).
    let rows_per_block = 16 * if limbs { 1 } else { mt } * (8 / k_warps);
    let grid_ok = n.div_ceil(rows_per_block) <= 65_535;
    (source::mma_rows(w.dtype, k, x.layout.offset, stride) && fits && grid_ok).then_some(MmaInput {
        x: node.inputs[1],
        offset: x.layout.offset as i64,
        stride,
        k,
        m,
        tile: (mt, nt),
        k_warps,
        prepared: cfg
            .force_prepare
            .unwrap_or_else(|| source::mma_prepares(k, n)),
        limbs,
    })
}

/// A product of Q8_0 or Q6_K weights with q8-quantized activations ([`Op::MatMulQ8`],
/// drafters'): `q8_quantize_x` writes the activations into the prepared-activation scratch,
/// then the `matmul_q8_0_q8x_*` kernels take one int8 mma per 32-weight block and 8 activation
/// rows, the `matmul_q6_k_q8x_*` kernels one per 16-weight sub-block (or, without tensor cores,
/// `matmul_<type>_q8x_warp` a warp per output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Q8Input {
    /// The weights' type: Q8_0 or Q6_K.
    pub weights: DType,
    /// The activation node.
    pub x: NodeId,
    /// Element offset of the first row in the node's storage.
    pub offset: i64,
    /// Elements between consecutive rows.
    pub stride: i64,
    /// Row width (weights per output row).
    pub k: usize,
    /// Activation rows.
    pub m: usize,
    /// Weight tiles of 16 rows per warp ([`source::q8_tiling`]); `cfg.mt` overrides it.
    pub mt: usize,
    /// Activation tiles of 8 rows per block: 1 up to 8 rows, else 2.
    pub nt: usize,
    /// Warps of a block that split one weight row's groups ([`source::mma_k_warps`]).
    pub k_warps: usize,
    /// Blocks that split them again ([`source::q8_tiling`]).
    pub k_splits: usize,
    /// Whether the int8 tensor-core kernels take it (the `_mma_` route is on, the rows are
    /// whole 256-weight groups and the grid fits); else the per-warp kernel.
    pub tensor_cores: bool,
}

impl Q8Input {
    /// Whether `other` reads the same activation rows.
    pub fn same_input(&self, other: &Q8Input) -> bool {
        (self.x, self.offset, self.stride, self.k, self.m)
            == (other.x, other.offset, other.stride, other.k, other.m)
    }

    /// Bytes of the quantized activations, for the rows rounded up to 16 (`q8x_mpad` in
    /// matvec_mma.cu: the kernels read a tile's scales in pairs, past the last row too): one
    /// per element (block-major, so a tile's rows of a block are contiguous), then one f32 scale
    /// per 32 elements.
    pub fn bytes(&self) -> usize {
        let rows = self.m.next_multiple_of(16);
        rows * self.k + 4 * (self.k / 32) * rows
    }
}

/// The activations of `node` if it is a [`Op::MatMulQ8`] of uniformly spaced rows (at least
/// one); the int8 tensor-core kernels take it with the `_mma_` route on, rows of whole
/// 256-weight groups and at most 65,535 blocks of weight rows (grid y).
pub(crate) fn q8_input(cfg: &MmaConfig, g: &Graph, node: &Node) -> Option<Q8Input> {
    if !matches!(node.op, Op::MatMulQ8) {
        return None;
    }
    let (w, x) = (g.node(node.inputs[0]), g.node(node.inputs[1]));
    let (k, n) = (w.shape().ne(0), w.shape().ne(1));
    let stride = uniform_row_stride(&x.layout)?;
    let m = x.shape().n_rows();
    let nt = if m <= 8 { 1 } else { 2 };
    let (mt, k_splits) = source::q8_tiling(k, n, m, cfg.sm_count);
    let mt = cfg.mt.unwrap_or(mt).clamp(1, 2);
    let k_splits = cfg.q8_splits.unwrap_or(k_splits);
    let k_warps = source::mma_k_warps(k);
    let fits = n.div_ceil(16 * mt * (8 / k_warps)) <= 65_535;
    let whole_blocks = match w.dtype {
        DType::Q8_0 => k % 32 == 0,
        DType::Q6_K => k % 256 == 0,
        _ => false,
    };
    (whole_blocks && m > 0).then_some(Q8Input {
        weights: w.dtype,
        x: node.inputs[1],
        offset: x.layout.offset as i64,
        stride,
        k,
        m,
        mt,
        nt,
        k_warps,
        k_splits,
        tensor_cores: cfg.enabled && k % 256 == 0 && fits,
    })
}

/// The element stride between consecutive rows if rows (dims 1..3) are uniformly spaced.
pub(crate) fn uniform_row_stride(l: &Layout) -> Option<i64> {
    let d = l.shape.dims();
    let s = l.strides;
    if !l.rows_contiguous() {
        return None;
    }
    let base = if d[1] > 1 {
        s[1]
    } else if d[2] > 1 {
        s[2]
    } else {
        s[3]
    };
    let ok1 = d[2] == 1 || d[1] == 1 || s[2] == s[1] * d[1];
    let ok2 = d[3] == 1
        || (d[1] * d[2] == 1)
        || s[3] == (if d[2] > 1 { s[2] * d[2] } else { s[1] * d[1] });
    (ok1 && ok2).then_some(base as i64)
}

/// The RMSNorm node whose whole, dense output a product reads (the norm kernel can then write the
/// prepared form itself).
fn fusable_norm(graph: &Graph, mi: &MmaInput) -> Option<usize> {
    let x = graph.node(mi.x);
    let whole = mi.offset == 0
        && mi.stride == mi.k as i64
        && x.shape().ne(0) == mi.k
        && x.shape().n_rows() == mi.m;
    (matches!(x.op, Op::RmsNorm { .. }) && whole).then_some(mi.x.index())
}

/// The `_mma_` plan of one loaded graph (node indices).
#[derive(Debug, Default)]
pub(crate) struct MmaPlan {
    /// Every product the `_mma_` kernels take, with its activations.
    pub products: HashMap<usize, MmaInput>,
    /// Products that read prepared activations from the scratch.
    pub reads: HashSet<usize>,
    /// Of those, the ones whose activations are already there when they run.
    pub ready: HashSet<usize>,
    /// RMSNorm nodes that also write their output in the prepared layout.
    pub norms: HashSet<usize>,
    /// The preparing nodes (norms of `norms`, or preparing products) whose prepared layout
    /// also holds the limbs, because a product with [`MmaInput::limbs`] reads it.
    pub limb_writers: HashSet<usize>,
    /// Bytes of the prepared-activation scratch (the largest prepared input).
    pub scratch_bytes: usize,
    /// f32 elements of the split-K partial sums (the largest split product).
    pub partial_elems: usize,
    /// Products on the GEMM route.
    pub gemm: HashMap<usize, GemmInput>,
    /// f16 elements of the GEMM route's weight scratch (the largest row tile).
    pub gemm_weight_elems: usize,
    /// f16 elements of the GEMM route's activation scratch (the largest input, and its rows'
    /// f32 scales).
    pub gemm_act_elems: usize,
    /// GEMM-route products whose f16 activations the previous one left in the scratch (q, k
    /// and v of one norm output; gate and up).
    pub gemm_ready: HashSet<usize>,
    /// [`Op::MatMulQ8`] products (on the int8 tensor-core kernels or the per-warp one; they
    /// share the prepared-activation scratch, which each one's quantization overwrites).
    pub q8: HashMap<usize, Q8Input>,
    /// Of those, the ones whose quantized activations the previous one left in the scratch.
    pub q8_ready: HashSet<usize>,
}

/// Plans a graph's GEMM-route and `_mma_` products in node order. A GEMM-route product of the
/// input the previous one converted to f16 finds it in the scratch (nothing between them writes
/// in place but WriteRows, which ends the sharing).
///
/// For the `_mma_` products, one scratch holds one prepared input at a
/// time: a product of the input the last preparing product read reads it too, without preparing
/// (nothing in between writes in place but WriteRows, which ends the sharing), even where the
/// size rule alone would split in place; a preparing product whose input is an RMSNorm's whole
/// output has the norm write it, unless a scratch reader runs between the norm and the product.
///
/// [`Op::MatMulQ8`] products quantize their input into the same scratch, unless the previous one
/// left the same input there (no preparing product or WriteRows in between); each ends the
/// prepared input's sharing, and no norm before one writes a prepared input for a product after
/// it.
pub(crate) fn plan(cfg: &MmaConfig, graph: &Graph) -> MmaPlan {
    let mut p = MmaPlan::default();
    let mut last: Option<MmaInput> = None;
    // The node that writes the scratch's current prepared input (a norm or a product).
    let mut writer: Option<usize> = None;
    let mut last_reader: Option<usize> = None;
    let mut last_gemm: Option<GemmInput> = None;
    // The q8 activations in the scratch, if nothing has written it since.
    let mut last_q8: Option<Q8Input> = None;
    for (i, node) in graph.nodes().iter().enumerate() {
        if matches!(node.op, Op::WriteRows) {
            last = None;
            last_gemm = None;
            last_q8 = None;
        }
        if let Some(qi) = q8_input(cfg, graph, node) {
            if last_q8.is_some_and(|l| l.same_input(&qi)) {
                p.q8_ready.insert(i);
            }
            p.scratch_bytes = p.scratch_bytes.max(qi.bytes());
            if qi.tensor_cores && qi.k_splits > 1 {
                let n = graph.node(node.inputs[0]).shape().ne(1);
                p.partial_elems = p.partial_elems.max(qi.k_splits * qi.m * n);
            }
            p.q8.insert(i, qi);
            last_q8 = Some(qi);
            // The scratch no longer holds a prepared input, and no norm before this may write
            // one for a product after it.
            last = None;
            last_reader = Some(i);
            continue;
        }
        if let Some(gi) = gemm_input(cfg, graph, node) {
            if last_gemm.is_some_and(|l| l.same_input(&gi)) {
                p.gemm_ready.insert(i);
            }
            last_gemm = Some(gi);
            p.gemm_weight_elems = p.gemm_weight_elems.max(gi.tile_rows * gi.k);
            // The f16 rows and one f32 scale per row.
            p.gemm_act_elems = p.gemm_act_elems.max(gi.m * gi.k + 2 * gi.m);
            p.gemm.insert(i, gi);
            continue;
        }
        let Some(mi) = mma_input(cfg, graph, node) else {
            continue;
        };
        p.products.insert(i, mi);
        let splits = source::mma_k_splits(mi.k);
        if splits > 1 {
            let n = graph.node(node.inputs[0]).shape().ne(1);
            p.partial_elems = p.partial_elems.max(splits * mi.m * n);
        }
        if last.is_some_and(|l| l.same_input(&mi)) {
            p.reads.insert(i);
            p.ready.insert(i);
            last_reader = Some(i);
        } else if mi.prepared {
            p.scratch_bytes = p.scratch_bytes.max(mi.prepared_bytes());
            p.reads.insert(i);
            writer = Some(i);
            last_q8 = None;
            if let Some(j) = fusable_norm(graph, &mi) {
                if last_reader.is_none_or(|r| r < j) {
                    p.norms.insert(j);
                    p.ready.insert(i);
                    writer = Some(j);
                }
            }
            last = Some(mi);
            last_reader = Some(i);
        } else {
            continue;
        }
        if mi.limbs {
            p.limb_writers.extend(writer);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_graph::{input, state, weight};
    use graph::GraphBuilder;

    fn cfg(force_prepare: Option<bool>) -> MmaConfig {
        MmaConfig {
            force_prepare,
            ..MmaConfig::default()
        }
    }

    /// A layer's shape: norm → q (large) → k, v (small); the norm prepares, k and v reuse.
    #[test]
    fn norm_prepares_and_small_products_reuse() {
        let mut g = GraphBuilder::new();
        let x = input(&mut g, "x", DType::F32, &[4096, 1]);
        let wn = input(&mut g, "wn", DType::F32, &[4096]);
        let h = g.rms_norm(x, Some(wn), 1e-6).unwrap();
        let wq = weight(&mut g, "q", DType::Q4_K, &[4096, 8192]);
        let wk = weight(&mut g, "k", DType::Q6_K, &[4096, 1024]);
        let wv = weight(&mut g, "v", DType::Q8_0, &[4096, 1024]);
        let q = g.matmul(wq, h).unwrap();
        let k = g.matmul(wk, h).unwrap();
        let v = g.matmul(wv, h).unwrap();
        let graph = g.finish(&[q, k, v]).unwrap();
        let limbs = MmaConfig {
            q4k_limbs: true,
            ..cfg(None)
        };
        let p = plan(&limbs, &graph);
        assert_eq!(p.products.len(), 3);
        let (hi, qi, ki, vi) = (h.index(), q.index(), k.index(), v.index());
        assert!(source::mma_prepares(4096, 8192) && !source::mma_prepares(4096, 1024));
        assert_eq!(p.norms, HashSet::from([hi]));
        assert_eq!(p.reads, HashSet::from([qi, ki, vi]));
        assert_eq!(p.ready, HashSet::from([qi, ki, vi]));
        // Halves and Q4_K sums, then (one row ≤ LIMB_MAX_ROWS) the limbs, lane sums and scales.
        assert_eq!(
            p.scratch_bytes,
            4096 * 4 + 4096 / 2 + 4096 * 5 + 4096 / 256 * 4 + source::LIMB_PAD_BYTES
        );
        assert!(p.products[&qi].limbs && !p.products[&ki].limbs);
        // q (Q4_K) reads limbs, so the norm writes them.
        assert_eq!(p.limb_writers, HashSet::from([hi]));
        assert!(plan(&cfg(None), &graph).limb_writers.is_empty());
        // Forced in place: nothing prepares, nothing reads the scratch.
        let p = plan(&cfg(Some(false)), &graph);
        assert!(p.reads.is_empty() && p.norms.is_empty() && p.scratch_bytes == 0);
    }

    /// A product of another input between a norm and its reader: the norm must not prepare (the
    /// other product's preparation would overwrite it), the reader prepares itself; and a
    /// WriteRows ends the sharing of a prepared input.
    #[test]
    fn interleaved_inputs_and_write_rows_prepare_afresh() {
        let mut g = GraphBuilder::new();
        let x = input(&mut g, "x", DType::F32, &[512, 3]);
        let y = input(&mut g, "y", DType::F32, &[512, 3]);
        let h = g.rms_norm(x, None, 1e-6).unwrap();
        let w1 = weight(&mut g, "w1", DType::Q4_K, &[512, 256]);
        let w2 = weight(&mut g, "w2", DType::Q4_K, &[512, 256]);
        let w3 = weight(&mut g, "w3", DType::Q4_K, &[512, 256]);
        let a = g.matmul(w1, y).unwrap();
        let b = g.matmul(w2, h).unwrap();
        let state = state(&mut g, "s", DType::F32, &[256, 8]);
        let slots = input(&mut g, "slots", DType::I32, &[3]);
        let written = g.write_rows(state, b, slots).unwrap();
        let c = g.matmul(w3, h).unwrap();
        let graph = g.finish(&[a, written, c]).unwrap();
        let p = plan(&cfg(Some(true)), &graph);
        let (ai, bi, ci) = (a.index(), b.index(), c.index());
        assert!(
            p.norms.is_empty(),
            "a product of y runs between the norm and its reader"
        );
        assert_eq!(p.reads, HashSet::from([ai, bi, ci]));
        assert!(p.ready.is_empty(), "{:?}", p.ready);
    }

    /// Split-K scratch follows the largest split product; unaligned or unsupported inputs stay
    /// off the route.
    #[test]
    fn split_scratch_and_route_limits() {
        let mut g = GraphBuilder::new();
        let x = input(&mut g, "x", DType::F32, &[16384, 5]);
        let w = weight(&mut g, "w", DType::Q4_K, &[16384, 100]);
        let wf = weight(&mut g, "wf", DType::F16, &[16384, 100]);
        let y = g.matmul(w, x).unwrap();
        let yf = g.matmul(wf, x).unwrap();
        let graph = g.finish(&[y, yf]).unwrap();
        let c = cfg(None);
        assert_eq!(source::mma_k_splits(16384), 4);
        assert_eq!(plan(&c, &graph).partial_elems, 4 * 5 * 100);
        assert!(mma_input(&c, &graph, graph.node(yf)).is_none());
        let off = MmaConfig {
            prefill: false,
            ..c
        };
        assert!(mma_input(&off, &graph, graph.node(y)).is_some());
    }

    /// Products of at least GEMM_MIN_ROWS rows with quantized or f16 weights take the GEMM route
    /// (and leave the `_mma_` plan); shorter batches, f32 weights and the route turned off do
    /// not. The weight scratch holds the largest row tile: all rows of a small product, a
    /// multiple of 256 rows of a head too wide for GEMM_WEIGHT_SCRATCH_BYTES.
    #[test]
    fn long_products_take_the_gemm_route() {
        let m = source::GEMM_MIN_ROWS;
        let mut g = GraphBuilder::new();
        let x = input(&mut g, "x", DType::F32, &[2048, m]);
        let xs = input(&mut g, "xs", DType::F32, &[2048, m - 1]);
        let w = weight(&mut g, "w", DType::Q4_K, &[2048, 512]);
        let wh = weight(&mut g, "wh", DType::F16, &[2048, 262_144]);
        let wf = weight(&mut g, "wf", DType::F32, &[2048, 512]);
        let y = g.matmul(w, x).unwrap();
        let ys = g.matmul(w, xs).unwrap();
        let yh = g.matmul(wh, x).unwrap();
        let yf = g.matmul(wf, x).unwrap();
        let graph = g.finish(&[y, ys, yh, yf]).unwrap();
        let p = plan(&cfg(None), &graph);
        let routed: HashSet<usize> = p.gemm.keys().copied().collect();
        assert_eq!(routed, HashSet::from([y.index(), yh.index()]));
        assert!(p.products.contains_key(&ys.index()) && !p.products.contains_key(&y.index()));
        let head = p.gemm[&yh.index()];
        let fit = source::GEMM_WEIGHT_SCRATCH_BYTES / (2 * 2048);
        assert_eq!(head.tile_rows, fit / 256 * 256);
        assert!(head.tile_rows < 262_144 && head.tile_rows.is_multiple_of(256));
        assert_eq!(p.gemm[&y.index()].tile_rows, 512);
        assert_eq!(p.gemm_weight_elems, head.tile_rows * 2048);
        assert_eq!(p.gemm_act_elems, m * 2048 + 2 * m);
        // yh reads the input y read, so y's f16 activations serve it.
        assert_eq!(p.gemm_ready, HashSet::from([yh.index()]));
        let off = MmaConfig {
            gemm: false,
            ..cfg(None)
        };
        let p = plan(&off, &graph);
        assert!(p.gemm.is_empty() && p.gemm_weight_elems == 0);
        assert!(p.products.contains_key(&y.index()));
    }

    /// q8 products share the quantized activations of one input (k then v), size the scratch
    /// and the split planes, and end the prepared input's sharing: an exact product of the same
    /// input after them prepares afresh, and a norm before them does not prepare for it.
    #[test]
    fn q8_products_share_their_quantized_input() {
        let mut g = GraphBuilder::new();
        let x = input(&mut g, "x", DType::F32, &[8192, 5]);
        let n = g.rms_norm(x, None, 1e-6).unwrap();
        let wk = weight(&mut g, "wk", DType::Q8_0, &[8192, 64]);
        let wv = weight(&mut g, "wv", DType::Q8_0, &[8192, 64]);
        let wq = weight(&mut g, "wq", DType::Q4_K, &[8192, 4096]);
        let k = g.matmul_q8(wk, n).unwrap();
        let v = g.matmul_q8(wv, n).unwrap();
        let q = g.matmul(wq, n).unwrap();
        let k2 = g.matmul_q8(wk, n).unwrap();
        let wbig = weight(&mut g, "wbig", DType::Q8_0, &[8192, 8192]);
        let big = g.matmul_q8(wbig, n).unwrap();
        let w48 = weight(&mut g, "w48", DType::Q8_0, &[96, 8]);
        let x48 = input(&mut g, "x48", DType::F32, &[96, 3]);
        let small = g.matmul_q8(w48, x48).unwrap();
        let graph = g.finish(&[k, v, q, k2, big, small]).unwrap();
        let c = cfg(None);
        let p = plan(&c, &graph);
        assert_eq!(p.q8.len(), 5);
        // 8,192 rows take two weight tiles per warp, unless one is forced; rows of 32 groups
        // split k over 2 blocks (source::q8_tiling).
        assert!(p.q8_ready.contains(&big.index()));
        assert_eq!(p.q8[&big.index()].mt, 2);
        let one = MmaConfig { mt: Some(1), ..c };
        assert_eq!(plan(&one, &graph).q8[&big.index()].mt, 1);
        assert!(!p.q8_ready.contains(&k.index()) && p.q8_ready.contains(&v.index()));
        // The exact product in between overwrote the scratch.
        assert!(!p.q8_ready.contains(&k2.index()));
        assert!(p.products.contains_key(&q.index()) && !p.ready.contains(&q.index()));
        assert!(!p.norms.contains(&n.index()));
        let qi = p.q8[&k.index()];
        assert_eq!((qi.mt, qi.nt, qi.k_warps, qi.k_splits), (1, 1, 8, 2));
        assert!(qi.tensor_cores);
        assert_eq!(qi.bytes(), 16 * 8192 + 4 * 256 * 16);
        assert!(p.scratch_bytes >= qi.bytes());
        // The largest split product sizes the planes: wbig, 2 planes of 5 × 8,192.
        assert_eq!(p.partial_elems, 2 * 5 * 8192);
        // Rows not of whole 256-weight groups take the per-warp kernel.
        assert!(!p.q8[&small.index()].tensor_cores);
        let off = MmaConfig {
            enabled: false,
            ..c
        };
        assert!(plan(&off, &graph).q8.values().all(|q| !q.tensor_cores));
    }

    /// A Q6_K `matmul_q8` (a drafter's tied head) takes the int8 tensor-core route with
    /// `q8_tiling`'s choice (two tiles from 4,096 rows, no split for the 262,144-row head at 16
    /// rows; one tile and 3 splits at 1,024 rows), `SPECULA_Q8_SPLITS` and `SPECULA_MMA_MT`
    /// override it and size the planes, and other weight types are not q8 products.
    #[test]
    fn q6_k_q8_products_take_the_int8_route() {
        let mut g = GraphBuilder::new();
        let x = input(&mut g, "x", DType::F32, &[5376, 16]);
        let head = weight(&mut g, "head", DType::Q6_K, &[5376, 262_144]);
        let small = weight(&mut g, "small", DType::Q6_K, &[5376, 1024]);
        let y = g.matmul_q8(head, x).unwrap();
        let z = g.matmul_q8(small, x).unwrap();
        let graph = g.finish(&[y, z]).unwrap();
        let c = cfg(None);
        let p = plan(&c, &graph);
        let (qy, qz) = (p.q8[&y.index()], p.q8[&z.index()]);
        assert_eq!(qy.weights, DType::Q6_K);
        assert!(qy.tensor_cores && qz.tensor_cores);
        assert_eq!((qy.mt, qy.nt, qy.k_warps, qy.k_splits), (2, 2, 8, 1));
        assert_eq!((qz.mt, qz.k_splits), (1, 3));
        assert!(p.q8_ready.contains(&z.index()));
        assert_eq!(p.partial_elems, 3 * 16 * 1024);
        let forced = MmaConfig {
            q8_splits: Some(2),
            mt: Some(1),
            ..c
        };
        let pf = plan(&forced, &graph);
        let qf = pf.q8[&y.index()];
        assert_eq!((qf.mt, qf.k_splits), (1, 2));
        assert_eq!(pf.partial_elems, 2 * 16 * 262_144);
        // MatMulQ8 takes only Q8_0 and Q6_K weights, so a Q4_K product is an exact one.
        let mut g = GraphBuilder::new();
        let x = input(&mut g, "x", DType::F32, &[256, 4]);
        let w = weight(&mut g, "w", DType::Q4_K, &[256, 64]);
        assert!(g.matmul_q8(w, x).is_err());
    }

    /// Up to 16 rows a weight row's groups are split between warps by k alone; longer batches
    /// give each warp its own rows unless asked not to, and take the type's prefill tile.
    #[test]
    fn prefill_products_give_each_warp_its_own_rows() {
        let mut g = GraphBuilder::new();
        let x16 = input(&mut g, "x16", DType::F32, &[2048, 16]);
        let x40 = input(&mut g, "x40", DType::F32, &[2048, 40]);
        let w = weight(&mut g, "w", DType::Q4_K, &[2048, 512]);
        let y16 = g.matmul(w, x16).unwrap();
        let y40 = g.matmul(w, x40).unwrap();
        let graph = g.finish(&[y16, y40]).unwrap();
        let c = cfg(None);
        let kw = |c: &MmaConfig, y: NodeId| mma_input(c, &graph, graph.node(y)).unwrap().k_warps;
        assert_eq!(kw(&c, y16), source::mma_k_warps(2048));
        assert_eq!(kw(&c, y40), 1);
        let tile = |y: NodeId| mma_input(&c, &graph, graph.node(y)).unwrap().tile;
        assert_eq!(tile(y16), (2, 2));
        assert_eq!(tile(y40), source::mma_prefill_tile(DType::Q4_K));
        let split = MmaConfig {
            prefill_row_warps: false,
            ..c
        };
        assert_eq!(kw(&split, y40), 8);
        // A verify-tile override changes 9–16-row products only.
        let verify = MmaConfig {
            verify_tile: Some((1, 1)),
            ..c
        };
        let tile_with =
            |c: &MmaConfig, y: NodeId| mma_input(c, &graph, graph.node(y)).unwrap().tile;
        assert_eq!(tile_with(&verify, y16), (1, 1));
        assert_eq!(tile_with(&verify, y40), tile(y40));
    }
}
