//! One launch (or a few) per graph op: `run_node`, and the tensor-core product launcher.

use super::*;

impl CudaBackend {
    /// Launches matmul `node` on the tensor-core `_mma_` kernels: the activation preparation
    /// when the plan says this product prepares, the product, and the split sums.
    pub(super) fn launch_mma(
        &self,
        exec: &Exec,
        id: NodeId,
        node: &Node,
        mi: &MmaInput,
        out: u64,
    ) -> Result<()> {
        let w = exec.graph.node(node.inputs[0]);
        let (k, n, m) = (mi.k, w.shape().ne(1), mi.m);
        let reads_prepared = exec.mma.reads.contains(&id.index());
        let x_base = self.base(exec, node.inputs[1])?;
        let xs = match exec.mma_scratch {
            Some(b) if reads_prepared => self.buf(b)?.ptr,
            None if reads_prepared => {
                return Err(backend_err("no scratch for prepared activations"))
            }
            _ => x_base,
        };
        if reads_prepared && !exec.mma.ready.contains(&id.index()) {
            let mut p = Args::default();
            p.ptr(x_base)
                .i64(mi.offset)
                .i64(mi.stride)
                .i32(k as i32)
                .i32(m as i32)
                .ptr(xs)
                .i32(i32::from(exec.mma.limb_writers.contains(&id.index())));
            self.launch(
                "mmv_prepare_x",
                ((k / 8).div_ceil(256) as u32, m as u32, 1),
                256,
                &mut p,
            )?;
            // The input may have changed since its image was written (a WriteRows into its
            // storage ends the plan's sharing, so the product re-prepares): write it anew.
            self.wg_image_of.set(None);
        }
        let (mt, nt) = mi.tile;
        let kw = mi.k_warps;
        let splits = source::mma_k_splits(k);
        let dst = self.split_dst(exec, splits, out)?;
        let (weights, repacked) = self.product_weights(exec, id, node, w.dtype)?;
        let suffix = if repacked {
            repacked_suffix(w.dtype)?
        } else {
            weight_suffix(w.dtype)?
        };
        let mut a = Args::default();
        a.ptr(weights)
            .ptr(xs)
            .ptr(dst)
            .i32(k as i32)
            .i32(n as i32)
            .i32(m as i32)
            .i32(kw as i32);
        // Blocks of 8 warps: kw of them split a weight tile's groups, the rest take further
        // tiles (16·mt rows each), along grid y; activation tiles along x; split planes along z.
        // The persistent kernels walk (tile, plane) units in fewer blocks along y instead.
        let limbs = reads_prepared && mi.limbs;
        let nt = if limbs { source::limb_tile(m) } else { nt };
        // Weight tiles along grid y: 16 rows each for the limb kernels, 16·mt for the others.
        let tiles = n.div_ceil(16 * if limbs { 1 } else { mt } * (8 / kw));
        // 9–16 rows on the persistent (2, 2) kernels (unless SPECULA_MMA_PERSIST_M2=0), not
        // prefill chunks on that tile (SPECULA_MMA_PREFILL_TILE=2x2 measures the one-shot ones).
        let persist_m2 = !limbs
            && self.mma_persist_m2
            && (mt, nt) == (2, 2)
            && m <= source::MMA_MAX_ROWS
            && source::persist_two_tiles(w.dtype);
        let persist_blocks = if persist_m2 {
            source::persist_blocks_m2(tiles * splits, self.sm_count)
        } else {
            source::persist_blocks(tiles * splits, self.sm_count)
        };
        // A walk whose blocks would not fit grid y runs on the one-shot kernels.
        let persist = self.mma_persist
            && persist_blocks <= 65_535
            && if limbs {
                source::PERSIST_LIMB_TILES.contains(&nt)
            } else {
                (mt, nt) == (1, 1) || persist_m2
            };
        let (name, cols) = if limbs {
            (format!("matmul_q4_k_limb_n{nt}"), m.div_ceil(2 * nt))
        } else {
            a.i64(mi.offset).i64(mi.stride);
            let tail = if reads_prepared { "" } else { "_x" };
            (
                format!("matmul_{suffix}_mma_m{mt}n{nt}{tail}"),
                m.div_ceil(8 * nt),
            )
        };
        // What the product touches while it runs: its activations (the whole prepared scratch,
        // or the input's buffer) and its output (the shared partials when split).
        let footprint = || -> Result<Footprint> {
            Ok(Footprint {
                reads: vec![if reads_prepared {
                    self.buf_range(exec.mma_scratch)?
                } else {
                    self.buf_range(Some(exec.node_buffer[node.inputs[1].index()]))?
                }],
                writes: vec![self.dst_range(exec, splits, out, m * n)?],
            })
        };
        let (kernel, grid) = if persist {
            a.i32(splits as i32);
            // One activation row (m must be 1): the `_p1` kernels, the same bits with less work
            // (source::persist_one_row).
            let one_row = !limbs && m == 1 && self.mma_one_row;
            let tail = if one_row && source::persist_one_row(w.dtype) {
                "_p1"
            } else {
                "_p"
            };
            (
                format!("{name}{tail}"),
                (cols as u32, persist_blocks as u32, 1),
            )
        } else {
            (name, (cols as u32, tiles as u32, splits as u32))
        };
        if self.products_as_reads {
            self.read_in_place_of_product(exec, id, node, weights)?;
        } else if let Some(f) = self.wgmma_form(exec, mi, w.dtype, repacked, reads_prepared, n) {
            self.launch_wgmma(exec, mi, f, weights, xs, dst, n, splits, footprint)?;
        } else if limbs {
            // The limb kernels take no PDL mode: an ordinary launch, which ends any chain.
            self.launch(&kernel, grid, 256, &mut a)?;
        } else {
            self.launch_product(&kernel, grid, &mut a, footprint)?;
        }
        if !exec.fuse.unsummed.contains(&id.index()) {
            self.sum_splits(dst, out, m * n, splits, 0)?;
        }
        Ok(())
    }

    /// Address of the `dtype` weights product `node` reads: the repacked copy the load made for
    /// it (`q6_k_repack`, `q8_0_repack`; source::MMA_REPACKED), or the weights as stored. True
    /// with the copy.
    fn product_weights(
        &self,
        exec: &Exec,
        id: NodeId,
        node: &Node,
        dtype: DType,
    ) -> Result<(u64, bool)> {
        let (ptr, repacked) = match exec.q8_weights.get(&id.index()) {
            Some(&b) => (self.buf(b)?.ptr, true),
            None if dtype == DType::Q8_0 => (self.q80_weights(exec, id, node)?, false),
            None => (self.base(exec, node.inputs[0])?, false),
        };
        // The Q4_K kernels load a group's header in one 16-byte word, aligned within the
        // 144-byte groups; device allocations are 256-byte aligned, so this only guards that
        // assumption.
        if dtype == DType::Q4_K && ptr % 16 != 0 {
            return Err(backend_err(format!(
                "Q4_K weights of node {} at an address not 16-byte aligned",
                id.index()
            )));
        }
        Ok((ptr, repacked))
    }

    /// Address of the Q8_0 weights of product `node`: the Q8_0 kernels read quants in aligned
    /// 4-byte words (`q80_words`); device allocations are 256-byte aligned, so the check only
    /// guards that assumption.
    fn q80_weights(&self, exec: &Exec, id: NodeId, node: &Node) -> Result<u64> {
        let weights = self.base(exec, node.inputs[0])?;
        if weights % 4 != 0 {
            return Err(backend_err(format!(
                "Q8_0 weights of node {} at a misaligned address",
                id.index()
            )));
        }
        Ok(weights)
    }

    /// Where a product split over `splits` planes writes: the shared partials, or `out`.
    fn split_dst(&self, exec: &Exec, splits: usize, out: u64) -> Result<u64> {
        if splits > 1 {
            self.partials_ptr(exec)
        } else {
            Ok(out)
        }
    }

    /// The device bytes of buffer `id` (none: an error).
    pub(super) fn buf_range(&self, id: Option<BufferId>) -> Result<std::ops::Range<u64>> {
        let id = id.ok_or_else(|| backend_err("a product's scratch is missing"))?;
        let b = self.buf(id)?;
        Ok(b.ptr..b.ptr + byte_size(b.dtype, b.shape)? as u64)
    }

    /// The bytes a product of `n_out` outputs over `splits` planes writes: the shared partials,
    /// or its `n_out` f32 outputs at `out`.
    fn dst_range(
        &self,
        exec: &Exec,
        splits: usize,
        out: u64,
        n_out: usize,
    ) -> Result<std::ops::Range<u64>> {
        if splits > 1 {
            self.buf_range(exec.mma_partials)
        } else {
            Ok(out..out + 4 * n_out as u64)
        }
    }

    /// Sums the `splits` planes of `n_out` partial sums at `dst` into `out` (`mmv_sum_splits`),
    /// plus the dense rows at `res` where that is not 0; nothing for one plane.
    fn sum_splits(&self, dst: u64, out: u64, n_out: usize, splits: usize, res: u64) -> Result<()> {
        if splits > 1 {
            let mut r = Args::default();
            r.ptr(dst)
                .ptr(out)
                .i32(n_out as i32)
                .i32(splits as i32)
                .ptr(res);
            self.launch("mmv_sum_splits", grid1(n_out, 256), 256, &mut r)?;
        }
        Ok(())
    }

    /// Launches [`Op::MatMulQ8`] `node`: the activations' quantization (unless the previous
    /// such product left them in the scratch), the int8 product, and the split sums.
    pub(super) fn launch_q8(
        &self,
        exec: &Exec,
        id: NodeId,
        node: &Node,
        qi: &Q8Input,
        out: u64,
    ) -> Result<()> {
        let w = exec.graph.node(node.inputs[0]);
        let (k, n, m) = (qi.k, w.shape().ne(1), qi.m);
        let scratch = exec
            .mma_scratch
            .ok_or_else(|| backend_err("no scratch for q8 activations"))?;
        let xs = self.buf(scratch)?.ptr;
        let type_name = match qi.weights {
            DType::Q8_0 => "q8_0",
            DType::Q6_K => "q6_k",
            other => return Err(backend_err(format!("no q8 product for {other} weights"))),
        };
        if !exec.mma.q8_ready.contains(&id.index()) {
            let mut p = Args::default();
            p.ptr(self.base(exec, node.inputs[1])?)
                .i64(qi.offset)
                .i64(qi.stride)
                .i32(k as i32)
                .i32(m as i32)
                .ptr(xs);
            self.launch(
                "q8_quantize_x",
                ((k / 32).div_ceil(8) as u32, m.min(65_535) as u32, 1),
                256,
                &mut p,
            )?;
        }
        if !qi.tensor_cores {
            let weights = self.base(exec, node.inputs[0])?;
            let mut a = Args::default();
            a.ptr(weights)
                .ptr(xs)
                .ptr(out)
                .i32(k as i32)
                .i32(n as i32)
                .i32(m as i32);
            return self.launch(
                &format!("matmul_{type_name}_q8x_warp"),
                grid1(n * m * 32, 256),
                256,
                &mut a,
            );
        }
        // The weights come from their repacked copy unless that is off or would not leave the
        // headroom free; then the Q6_K kernel reads its 2-byte-aligned groups in words where it
        // may. (Without tensor cores — before sm_80, or SPECULA_MMA=0 — a Q6_K head takes the
        // per-warp kernel above: correct but slow, a warp per output.)
        let (weights, repacked) = self.product_weights(exec, id, node, qi.weights)?;
        let type_name = if repacked {
            repacked_suffix(qi.weights)?
        } else {
            type_name
        };
        let (kw, splits) = (qi.k_warps, qi.k_splits);
        let dst = self.split_dst(exec, splits, out)?;
        let mut a = Args::default();
        a.ptr(weights)
            .ptr(xs)
            .ptr(dst)
            .i32(k as i32)
            .i32(n as i32)
            .i32(m as i32)
            .i32(kw as i32)
            .i64(0)
            .i64(0);
        let footprint = || -> Result<Footprint> {
            Ok(Footprint {
                reads: vec![self.buf_range(Some(scratch))?],
                writes: vec![self.dst_range(exec, splits, out, m * n)?],
            })
        };
        if self.products_as_reads {
            self.read_in_place_of_product(exec, id, node, weights)?;
        } else {
            self.launch_product(
                &format!("matmul_{type_name}_q8x_mma_m{}n{}", qi.mt, qi.nt),
                (
                    m.div_ceil(8 * qi.nt) as u32,
                    n.div_ceil(16 * qi.mt * (8 / kw)) as u32,
                    splits as u32,
                ),
                &mut a,
                footprint,
            )?;
        }
        if !exec.fuse.unsummed.contains(&id.index()) {
            self.sum_splits(dst, out, m * n, splits, 0)?;
        }
        Ok(())
    }

    /// The `_mma_` route settings now.
    pub(super) fn mma_config(&self) -> MmaConfig {
        MmaConfig {
            enabled: self.mma_matvec,
            prefill: self.mma_prefill,
            mt: self.mma_mt,
            prefill_row_warps: self.mma_prefill_row_warps,
            prefill_tile: self.mma_prefill_tile,
            verify_tile: self.mma_verify_tile,
            force_prepare: self.mma_prepare,
            gemm: self.gemm_route && self.cublas.is_some(),
            gemm_weight_bytes: self.gemm_weight_bytes,
            q4k_limbs: self.q4k_limbs,
            sm_count: self.sm_count,
            q8_splits: self.q8_splits,
        }
    }

    /// Base address of `node`'s storage and its layout.
    pub(super) fn base(&self, exec: &Exec, node: NodeId) -> Result<u64> {
        Ok(self.buf(exec.node_buffer[node.index()])?.ptr)
    }

    /// Address of a dense 1-D int array node's first element.
    pub(super) fn addr(&self, exec: &Exec, node: NodeId) -> Result<u64> {
        let n = exec.graph.node(node);
        Ok(self.base(exec, node)? + (n.layout.offset * elem_bytes(n.dtype).max(1)) as u64)
    }

    pub(super) fn run_node(&self, exec: &Exec, id: NodeId, node: &Node) -> Result<()> {
        let g = &exec.graph;
        let inp = |k: usize| g.node(node.inputs[k]);
        let out = self.base(exec, id)?;
        let n_out = node.shape().n_elems();
        if exec.fuse.skip.contains(&id.index()) {
            return Ok(());
        }
        if let Some(members) = exec.fuse.groups.get(&id.index()) {
            return self.launch_norm_group(exec, members);
        }
        match exec.fuse.fused.get(&id.index()) {
            Some(Fused::Tail(t)) => {
                // The next norm's prepared activations, if its products read them.
                let xs = match (t.next, exec.mma_scratch) {
                    (Some(n2), Some(b)) if exec.mma.norms.contains(&n2.index()) => self.buf(b)?.ptr,
                    _ => 0,
                };
                return self.launch_norm(exec, t.norm, out, xs, Some(*t));
            }
            Some(&Fused::SumAdd { residual, planes }) => {
                let partials = self.partials_ptr(exec)?;
                let res = self.base(exec, residual)?;
                return self.sum_splits(partials, out, n_out, planes, res);
            }
            Some(Fused::Rope { .. } | Fused::NormWrite { .. }) => {
                let (norm, mut a) = self.head_norm_args(exec, id, out)?;
                return self.launch_norm_args(exec, norm, &mut a);
            }
            Some(&Fused::Route { softmax, top_k }) => {
                return self.launch_route(exec, node, out, softmax, top_k);
            }
            None => {}
        }
        let unsupported = |why: String| {
            backend_err(format!(
                "{} (node '{}'): {why}",
                node.op.name(),
                node.label(id)
            ))
        };
        // A product's row width and activation row stride, or why the kernels cannot take it.
        let product_rows = |w: &Node, x: &Node| -> Result<(usize, i64)> {
            let k = w.shape().ne(0);
            if !k.is_multiple_of(32) {
                return Err(unsupported(format!(
                    "rows of {k} elements (needs a multiple of 32)"
                )));
            }
            let stride = uniform_row_stride(&x.layout)
                .ok_or_else(|| unsupported("activation rows are not uniformly strided".into()))?;
            Ok((k, stride))
        };
        match &node.op {
            Op::Input | Op::Weight | Op::State | Op::View | Op::Reshape | Op::Permute(_) => Ok(()),
            Op::GetRows => {
                let t = inp(0);
                let (k, n_rows) = (t.shape().ne(0), t.shape().ne(1));
                if k % 32 != 0 {
                    return Err(unsupported(format!(
                        "rows of {k} elements (needs a multiple of 32)"
                    )));
                }
                let n_ids = inp(1).shape().n_elems();
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .ptr(self.addr(exec, node.inputs[1])?)
                    .ptr(out);
                a.i32(k as i32)
                    .i32(n_rows as i32)
                    .i32(n_ids as i32)
                    .ptr(self.err_word);
                self.launch(
                    &format!("get_rows_{}", weight_suffix(t.dtype)?),
                    grid1(k / 32 * n_ids, 128),
                    128,
                    &mut a,
                )
            }
            Op::MatMul => {
                if let Some(gi) = exec.mma.gemm.get(&id.index()) {
                    return self.launch_gemm(exec, id, node, gi, out);
                }
                if let Some(mi) = exec.mma.products.get(&id.index()) {
                    return self.launch_mma(exec, id, node, mi, out);
                }
                let (w, x) = (inp(0), inp(1));
                let (k, stride) = product_rows(w, x)?;
                let n = w.shape().ne(1);
                let m = x.shape().n_rows();
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .ptr(out);
                a.i32(k as i32)
                    .i32(n as i32)
                    .i32(m as i32)
                    .i64(x.layout.offset as i64)
                    .i64(stride);
                // Q4_K, Q6_K and Q8_0 rows of whole 256-weight groups with 16-byte-aligned
                // activations take the fast kernels.
                let fast = source::mma_rows(w.dtype, k, x.layout.offset, stride);
                let tile = if fast {
                    source::row_tile(m, self.max_row_tile)
                } else {
                    source::scalar_row_tile(n, m, self.max_row_tile, self.sm_count)
                };
                if m > source::TENSOR_CORE_MIN_ROWS && self.tensor_cores {
                    return self.launch(
                        &format!("matmul_tc_{}", weight_suffix(w.dtype)?),
                        (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1),
                        128,
                        &mut a,
                    );
                }
                // Other Q8_0 and Q5_0 rows at even addresses (the 26B-A4B's 2,112-wide FFN
                // downs), in batches of 2 to 16 rows, take the quad kernel: a warp four output
                // rows, eight activation rows a block.
                let quad = !fast
                    && matches!(w.dtype, DType::Q8_0 | DType::Q5_0)
                    && self.base(exec, node.inputs[0])? % 2 == 0
                    && (2..=16).contains(&m);
                if quad {
                    return self.launch(
                        &format!("matmul_{}_quad", weight_suffix(w.dtype)?),
                        (
                            n.div_ceil(4 * source::QUAD_WARP_ROWS) as u32,
                            m.div_ceil(8) as u32,
                            1,
                        ),
                        128,
                        &mut a,
                    );
                }
                let family = if fast {
                    match w.dtype {
                        DType::Q4_K => "q4_k_fast",
                        DType::Q6_K => "q6_k_fast",
                        _ => "q8_0_fast",
                    }
                } else {
                    weight_suffix(w.dtype)?
                };
                let per_warp = if fast {
                    source::fast_rows_per_warp(tile)
                } else {
                    1
                };
                self.launch(
                    &format!("matmul_{family}_r{tile}"),
                    (n.div_ceil(4 * per_warp) as u32, m.div_ceil(tile) as u32, 1),
                    128,
                    &mut a,
                )
            }
            Op::MatMulQ8 => {
                let qi = exec.mma.q8.get(&id.index()).ok_or_else(|| {
                    backend_err(format!(
                        "matmul_q8 node {}: its activation rows must be uniformly spaced and at \
                         least one",
                        id.index()
                    ))
                })?;
                self.launch_q8(exec, id, node, qi, out)
            }
            Op::MatMulId => {
                let (w, x, ids) = (inp(0), inp(1), inp(2));
                let (k, stride) = product_rows(w, x)?;
                let (n, n_expert) = (w.shape().ne(1), w.shape().ne(2));
                let (n_used, t) = (ids.shape().ne(0), ids.shape().ne(1));
                let weights = self.base(exec, node.inputs[0])?;
                // Q4_K, Q6_K and Q8_0 experts of whole 256-weight groups with 16-byte-aligned
                // activation rows take the one-row tensor-core kernel per (token, slot) pair,
                // `matmul_id_tc_<type>` (unless SPECULA_MMA_ID=0); the rest the scalar
                // `matmul_id_<type>`. A batch of several tokens (a verify batch) groups its
                // pairs by expert where a grouped kernel exists (`matmul_id_tcg_<type>`, and
                // `matmul_id_g_<type>` for Q8_0 and Q5_0 rows at even addresses), so a picked
                // expert's weights are read once, not once a pair; unless SPECULA_MOE_GROUP=0.
                // The choice depends on the types and shapes only, and every choice gives a
                // pair's output the same bits.
                let aligned = match w.dtype {
                    DType::Q4_K => weights % 16 == 0,
                    DType::Q8_0 => weights % 4 == 0,
                    _ => true,
                };
                let kw = source::mma_k_warps(k);
                let tiles = n.div_ceil(16 * (8 / kw));
                let pairs = n_used * t;
                let tensor_cores = self.mma_matvec
                    && self.mma_id
                    && source::mma_rows(w.dtype, k, x.layout.offset, stride)
                    && aligned
                    && tiles <= 65_535
                    && pairs <= 65_535;
                let grouped = self.moe_group && t >= 2 && pairs <= source::MOE_GROUP_MAX_PAIRS;
                let mut a = Args::default();
                a.ptr(weights)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .ptr(self.addr(exec, node.inputs[2])?)
                    .ptr(out);
                a.i32(k as i32)
                    .i32(n as i32)
                    .i32(n_expert as i32)
                    .i32(n_used as i32)
                    .i32(x.shape().ne(1) as i32);
                a.i64(x.layout.offset as i64).i64(stride);
                let suffix = weight_suffix(w.dtype)?;
                if tensor_cores {
                    // As the one-shot `_mma_` kernels: kw warps of a block split a row's groups,
                    // the block's other warps take further 16-row tiles; a grouped block takes
                    // `moe_tiles` of its expert's tiles in turn.
                    a.i32(kw as i32);
                    if grouped {
                        a.i32(self.moe_tiles as i32).ptr(self.err_word);
                        return self.launch(
                            &format!("matmul_id_tcg_{suffix}"),
                            (1, tiles.div_ceil(self.moe_tiles) as u32, pairs as u32),
                            256,
                            &mut a,
                        );
                    }
                    a.ptr(self.err_word);
                    return self.launch(
                        &format!("matmul_id_tc_{suffix}"),
                        (1, tiles as u32, pairs as u32),
                        256,
                        &mut a,
                    );
                }
                // The grouped scalar kernel takes the rows `quad_sums` takes.
                let quad_rows = matches!(w.dtype, DType::Q8_0 | DType::Q5_0) && weights % 2 == 0;
                let (family, block_rows) = if grouped && quad_rows {
                    ("matmul_id_g", 4 * source::QUAD_WARP_ROWS)
                } else {
                    ("matmul_id", 4)
                };
                a.ptr(self.err_word);
                self.launch(
                    &format!("{family}_{suffix}"),
                    (n.div_ceil(block_rows) as u32, pairs as u32, 1),
                    128,
                    &mut a,
                )
            }
            Op::Binary(op) => {
                let (x, y) = (inp(0), inp(1));
                // b broadcast: output dims, zero strides where b has size 1.
                let mut lb = y.layout;
                for i in 0..4 {
                    if y.shape().ne(i) == 1 {
                        lb.strides[i] = 0;
                    }
                }
                lb.shape = node.shape();
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&x.layout)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .i32(code(y.dtype))
                    .layout(&lb);
                a.ptr(out)
                    .i64(n_out as i64)
                    .i32(if *op == BinaryOp::Add { 0 } else { 1 });
                self.launch("binary_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::Unary(op) => {
                let (k, p) = match op {
                    UnaryOp::Scale(s) => (0, *s),
                    UnaryOp::Gelu => (1, 0.0),
                    UnaryOp::Silu => (2, 0.0),
                    UnaryOp::Softcap(c) => (3, *c),
                };
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&inp(0).layout)
                    .ptr(out)
                    .i64(n_out as i64)
                    .i32(k)
                    .f32(p);
                self.launch("unary_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::Glu(op) => {
                let dense4 = |l: &Layout| l.is_contiguous() && l.offset.is_multiple_of(4);
                let vec4 =
                    n_out.is_multiple_of(4) && dense4(&inp(0).layout) && dense4(&inp(1).layout);
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&inp(0).layout)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .layout(&inp(1).layout);
                a.ptr(out)
                    .i64(n_out as i64)
                    .i32(if *op == GluOp::GeGlu { 0 } else { 1 })
                    .i32(i32::from(vec4));
                let threads = if vec4 { n_out / 4 } else { n_out };
                self.launch("glu_f32", grid1(threads, 256), 256, &mut a)
            }
            Op::Contiguous => {
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&inp(0).layout)
                    .ptr(out)
                    .i64(n_out as i64);
                self.launch("copy_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::Concat { dim } => {
                let d = node.shape().dims();
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&inp(0).layout)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .layout(&inp(1).layout)
                    .ptr(out);
                for v in d {
                    a.i64(v as i64);
                }
                a.i32(*dim as i32).i64(inp(0).shape().ne(*dim) as i64);
                self.launch("concat_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::RmsNorm { .. } => {
                let xs = match exec.mma_scratch {
                    Some(b) if exec.mma.norms.contains(&id.index()) => self.buf(b)?.ptr,
                    _ => 0,
                };
                self.launch_norm(exec, id, out, xs, None)
            }
            Op::Rope(p) => {
                let x = inp(0);
                let d = x.shape().dims();
                let ff = match node.inputs.get(2) {
                    Some(&f) => self.addr(exec, f)?,
                    None => 0,
                };
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&x.layout)
                    .ptr(self.addr(exec, node.inputs[1])?)
                    .ptr(ff)
                    .ptr(out);
                a.i32(d[0] as i32)
                    .i32(d[1] as i32)
                    .i32((d[1] * d[2]) as i32)
                    .i32(p.n_rot as i32)
                    .f32(p.theta);
                self.launch("rope_f32", grid1(n_out, 256), 256, &mut a)
            }
            Op::Softmax => {
                let x = inp(0);
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&x.layout)
                    .ptr(out)
                    .i32(x.shape().ne(0) as i32);
                self.launch(
                    "softmax_f32",
                    (x.shape().n_rows() as u32, 1, 1),
                    source::SOFTMAX_THREADS,
                    &mut a,
                )
            }
            Op::Attention(p) => {
                let (q, k, v) = (inp(0), inp(1), inp(2));
                let (d, d_v) = (q.shape().ne(0), v.shape().ne(0));
                if d > 512 || d_v > 512 {
                    return Err(unsupported(format!("head dims {d}/{d_v} above 512")));
                }
                let mask = match node.inputs.get(5) {
                    Some(&m) => self.base(exec, m)? + (g.node(m).layout.offset * 4) as u64,
                    None => 0,
                };
                let (kind, window) = match p.mask {
                    AttnMask::None | AttnMask::Explicit => (0, 0),
                    AttnMask::Causal => (1, 0),
                    AttnMask::SlidingWindow { window } => (2, window as i32),
                };
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?).layout(&q.layout);
                a.ptr(self.base(exec, node.inputs[1])?)
                    .i32(code(k.dtype))
                    .layout(&k.layout);
                a.ptr(self.base(exec, node.inputs[2])?)
                    .i32(code(v.dtype))
                    .layout(&v.layout);
                a.ptr(self.addr(exec, node.inputs[3])?)
                    .ptr(self.addr(exec, node.inputs[4])?)
                    .ptr(mask)
                    .ptr(out);
                a.i32(d as i32)
                    .i32(d_v as i32)
                    .i32(q.shape().ne(1) as i32)
                    .i32(k.shape().ne(1) as i32)
                    .i32(k.shape().ne(2) as i32);
                a.f32(p.scale)
                    .i32(kind)
                    .i32(window)
                    .i32(i32::from(p.kv_layout == KvLayout::Ring))
                    .ptr(self.err_word);
                let (n_head, n_tok) = (q.shape().ne(1), q.shape().ne(2));
                let (n_split, scratch) = match exec.node_scratch.get(&id.index()) {
                    Some(&(b, n)) => (n, self.buf(b)?.ptr),
                    None => (1, 0),
                };
                a.i32(n_split as i32).ptr(scratch);
                let route = self.attention_route(g, node);
                // Two heads of one K/V group per block where the group's heads pair up and the
                // batch has the queries to keep the blocks in flight.
                let n_rep = n_head / k.shape().ne(1).max(1);
                let grouped = self.att_group.is_some_and(|min| n_tok >= min)
                    && matches!(route, AttentionKernel::Wide { .. })
                    && n_rep % 2 == 0;
                let mut grid =
                    route.grid(n_head, k.shape().ne(1), n_tok, n_split, self.att_tc_blocks);
                // Tensor-core blocks that walk several splits (fewer slots than splits) take
                // the `_w` form.
                let walks = grid != route.grid(n_head, k.shape().ne(1), n_tok, n_split, 0);
                let name = if grouped {
                    grid.0 = (n_head / 2) as u32;
                    format!("{}_g2", route.name())
                } else if walks {
                    format!("{}_w", route.name())
                } else {
                    route.name().to_string()
                };
                self.launch_smem(
                    &name,
                    grid,
                    route.threads(),
                    route.smem_bytes() as u32,
                    &mut a,
                )?;
                if n_split > 1 {
                    let mut c = Args::default();
                    c.ptr(scratch)
                        .ptr(out)
                        .i32(d_v as i32)
                        .i32(n_head as i32)
                        .i32(n_split as i32);
                    c.ptr(self.addr(exec, node.inputs[3])?)
                        .ptr(self.addr(exec, node.inputs[4])?)
                        .i32(k.shape().ne(2) as i32)
                        .i32(kind)
                        .i32(window)
                        .i32(i32::from(p.kv_layout == KvLayout::Ring));
                    self.launch(
                        "attention_combine_f32",
                        (n_head as u32, n_tok as u32, d_v.div_ceil(128) as u32),
                        128,
                        &mut c,
                    )?;
                }
                Ok(())
            }
            Op::WriteRows => {
                let src = inp(1);
                let row = src.shape().ne(0);
                let n = src.shape().n_rows();
                let mut a = Args::default();
                a.ptr(out)
                    .i32(code(node.dtype))
                    .i64(node.layout.offset as i64)
                    .i32((n_out / row.max(1)) as i32);
                a.ptr(self.base(exec, node.inputs[1])?)
                    .layout(&src.layout)
                    .ptr(self.addr(exec, node.inputs[2])?);
                a.i32(row as i32).i32(n as i32).ptr(self.err_word);
                self.launch("write_rows", grid1(row * n, 256), 256, &mut a)
            }
            Op::Argmax => {
                let x = inp(0);
                let (n, rows) = (x.shape().ne(0), x.shape().n_rows());
                let input = self.base(exec, node.inputs[0])?;
                if let Some(&(scratch, chunks)) = exec.node_scratch.get(&id.index()) {
                    // Chunk values, then chunk indices, in the node's scratch.
                    let values = self.buf(scratch)?.ptr;
                    let indices = values + (rows * chunks * 4) as u64;
                    let mut a = Args::default();
                    a.ptr(input)
                        .layout(&x.layout)
                        .i32(n as i32)
                        .i32(chunks as i32)
                        .ptr(values)
                        .ptr(indices);
                    self.launch(
                        "argmax_chunks_f32",
                        (chunks as u32, rows as u32, 1),
                        source::ARGMAX_THREADS,
                        &mut a,
                    )?;
                    let mut p = Args::default();
                    p.ptr(values).ptr(indices).i32(chunks as i32).ptr(out);
                    return self.launch(
                        "argmax_pick_f32",
                        (rows as u32, 1, 1),
                        source::ARGMAX_THREADS,
                        &mut p,
                    );
                }
                let mut a = Args::default();
                a.ptr(input).layout(&x.layout).ptr(out).i32(n as i32);
                // One block per row (ties resolve to the lowest index whatever the thread count).
                let threads = if n >= 2048 { 1024 } else { 256 };
                self.launch("argmax_f32", (rows as u32, 1, 1), threads, &mut a)
            }
            Op::TopK(k) => {
                let x = inp(0);
                let rows = x.shape().n_rows();
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&x.layout)
                    .ptr(out)
                    .i32(x.shape().ne(0) as i32)
                    .i32(*k as i32)
                    .i64(rows as i64);
                // A warp per row, source::TOP_K_WARPS rows a block.
                let per_block = source::TOP_K_WARPS;
                self.launch(
                    "top_k_f32",
                    grid1(rows, per_block),
                    32 * per_block as u32,
                    &mut a,
                )
            }
            Op::MoeSum => {
                let (x, w) = (inp(0), inp(1));
                let (h, k, t) = (x.shape().ne(0), x.shape().ne(1), x.shape().ne(2));
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&x.layout)
                    .ptr(self.base(exec, node.inputs[1])?)
                    .layout(&w.layout)
                    .ptr(out)
                    .i32(h as i32)
                    .i32(k as i32)
                    .i32(t as i32);
                self.launch("moe_sum_f32", grid1(h * t, 256), 256, &mut a)
            }
            Op::MoeWeights { renormalize } => {
                let (probs, ids) = (inp(0), inp(1));
                let mut a = Args::default();
                a.ptr(self.base(exec, node.inputs[0])?)
                    .layout(&probs.layout)
                    .ptr(self.addr(exec, node.inputs[1])?);
                match node.inputs.get(2) {
                    Some(&s) => a.ptr(self.base(exec, s)?).i32(code(g.node(s).dtype)),
                    None => a.ptr(0).i32(-1),
                };
                let (k, t) = (ids.shape().ne(0), ids.shape().ne(1));
                a.ptr(out)
                    .i32(probs.shape().ne(0) as i32)
                    .i32(k as i32)
                    .i32(t as i32)
                    .i32(i32::from(*renormalize))
                    .ptr(self.err_word);
                // A warp per token, source::MOE_WEIGHTS_WARPS tokens a block.
                let per_block = source::MOE_WEIGHTS_WARPS;
                self.launch(
                    "moe_weights_f32",
                    grid1(t, per_block),
                    (32 * per_block) as u32,
                    &mut a,
                )
            }
        }
    }
}
