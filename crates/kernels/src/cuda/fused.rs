//! Launches of the fused RMSNorm kernel (`fuse_plan`): plain norms, post-norm tails with
//! their residual, scale, split sums and next norm, head norms with RoPE and cache writes; and of
//! the fused MoE routing.

use super::*;

impl CudaBackend {
    /// Launches RMSNorm node `norm` writing `out` (and the prepared layout at `xs` if not 0), or,
    /// with `tail`, the fused post-norm tail: `(residual + norm) · scale` into `out`.
    pub(super) fn launch_norm(
        &self,
        exec: &Exec,
        norm: NodeId,
        out: u64,
        xs: u64,
        tail: Option<fuse_plan::NormTail>,
    ) -> Result<()> {
        let mut a = self.norm_args(exec, norm, out, xs, tail)?;
        a.ptr(0).ptr(0).i32(0).i32(0).f32(0.0);
        self.cache_write_args(exec, None, &mut a)?;
        // The prepared layout is the output's, or the next norm's for a tail that does it.
        let prepared = tail.and_then(|t| t.next).unwrap_or(norm);
        let limbs = xs != 0 && exec.mma.limb_writers.contains(&prepared.index());
        a.i32(i32::from(limbs));
        match self.norm_cluster(exec, norm, out, tail)? {
            Some(blocks) => {
                let rows = exec
                    .graph
                    .node(exec.graph.node(norm).inputs[0])
                    .shape()
                    .n_rows();
                self.cluster_norm_launches
                    .set(self.cluster_norm_launches.get() + 1);
                self.launch_cluster(
                    "rms_norm_cluster_f32",
                    ((rows * blocks) as u32, 1, 1),
                    source::RN_CLUSTER_THREADS,
                    blocks as u32,
                    &mut a,
                )
            }
            None => self.launch_norm_args(exec, norm, &mut a),
        }
    }

    /// The blocks per row of `rms_norm_cluster_f32` for RMSNorm node `norm` writing `out` (with
    /// `tail`), or None where `rms_norm_f32` takes it: clusters are off or absent (before sm_90),
    /// the batch has more than [`source::RN_CLUSTER_MAX_ROWS`] rows, the rows are narrower than
    /// 2,048 (one block of 256 threads each), or `rms_norm_f32` would not take its register path
    /// (rows of a multiple of 8 up to 8,192, 16-byte-aligned rows, residual and planes). Both
    /// kernels give the same bits (tested).
    fn norm_cluster(
        &self,
        exec: &Exec,
        norm: NodeId,
        out: u64,
        tail: Option<fuse_plan::NormTail>,
    ) -> Result<Option<usize>> {
        let g = &exec.graph;
        let x = g.node(g.node(norm).inputs[0]);
        let (n, rows) = (x.shape().ne(0), x.shape().n_rows());
        let threads = source::RN_CLUSTER_THREADS as usize;
        if !self.cluster_norms
            || rows > source::RN_CLUSTER_MAX_ROWS
            || n < 2048
            || !n.is_multiple_of(8)
            || n / 8 > 8 * threads
        {
            return Ok(None);
        }
        let planes = tail.map_or(1, |t| t.planes);
        let x_ptr = self.norm_input_ptr(exec, norm, planes)?;
        let res = match tail {
            Some(t) => self.addr(exec, t.residual)?,
            None => 0,
        };
        let l = &x.layout;
        let aligned = x_ptr.is_multiple_of(16)
            && l.offset.is_multiple_of(4)
            && l.strides[1..].iter().all(|s| s.is_multiple_of(4))
            && out.is_multiple_of(16)
            && res.is_multiple_of(16)
            && (planes == 1 || x.shape().n_elems().is_multiple_of(4));
        Ok(aligned.then(|| (n / 8).div_ceil(threads)))
    }

    /// The cache-write arguments of `rms_norm_f32`: the WriteRows node `write` whose store the
    /// launch does (its state, type, offset, rows, slots and the error word), or none.
    pub(super) fn cache_write_args(
        &self,
        exec: &Exec,
        write: Option<NodeId>,
        a: &mut Args,
    ) -> Result<()> {
        let Some(w) = write else {
            a.ptr(0).i32(0).i64(0).i32(0).ptr(0).ptr(0);
            return Ok(());
        };
        let g = &exec.graph;
        let node = g.node(w);
        let row = g.node(node.inputs[1]).shape().ne(0).max(1);
        a.ptr(self.base(exec, w)?)
            .i32(code(node.dtype))
            .i64(node.layout.offset as i64)
            .i32((node.shape().n_elems() / row) as i32)
            .ptr(self.addr(exec, node.inputs[2])?)
            .ptr(self.err_word);
        Ok(())
    }

    /// The RMSNorm node and the complete `rms_norm_f32` arguments of head-norm launch `key` (a
    /// `Fused::Rope` or `Fused::NormWrite` node) writing `out`: launched alone or in a group.
    pub(super) fn head_norm_args(
        &self,
        exec: &Exec,
        key: NodeId,
        out: u64,
    ) -> Result<(NodeId, Args)> {
        match exec.fuse.fused.get(&key.index()) {
            Some(Fused::Rope { norm, write }) => {
                Ok((*norm, self.norm_rope_args(exec, *norm, key, out, *write)?))
            }
            Some(Fused::NormWrite { write }) => {
                Ok((key, self.norm_write_args(exec, key, out, *write)?))
            }
            _ => Err(backend_err(format!(
                "node '{}' is not a head norm launch",
                exec.graph.node(key).label(key)
            ))),
        }
    }

    /// The complete `rms_norm_f32` arguments of the RMSNorm node `norm` fused with the RoPE node
    /// `rope` that reads it (`Fused::Rope`): the rotated rows go to `out` (the RoPE node's output),
    /// or into a cache for the WriteRows node `write`.
    fn norm_rope_args(
        &self,
        exec: &Exec,
        norm: NodeId,
        rope: NodeId,
        out: u64,
        write: Option<NodeId>,
    ) -> Result<Args> {
        let g = &exec.graph;
        let node = g.node(rope);
        let Op::Rope(p) = node.op else {
            return Err(backend_err(format!(
                "node '{}' is not a RoPE",
                node.label(rope)
            )));
        };
        let d = g.node(node.inputs[0]).shape().dims();
        let ff = match node.inputs.get(2) {
            Some(&f) => self.addr(exec, f)?,
            None => 0,
        };
        let mut a = self.norm_args(exec, norm, out, 0, None)?;
        a.ptr(self.addr(exec, node.inputs[1])?)
            .ptr(ff)
            .i32(d[1] as i32)
            .i32(p.n_rot as i32)
            .f32(p.theta);
        self.cache_write_args(exec, write, &mut a)?;
        a.i32(0);
        Ok(a)
    }

    /// The complete `rms_norm_f32` arguments of RMSNorm node `norm` (rows of heads) writing its
    /// rows into a cache for the WriteRows node `write` (`Fused::NormWrite`).
    fn norm_write_args(&self, exec: &Exec, norm: NodeId, out: u64, write: NodeId) -> Result<Args> {
        let mut a = self.norm_args(exec, norm, out, 0, None)?;
        let heads = exec.graph.node(norm).shape().ne(1);
        a.ptr(0).ptr(0).i32(heads as i32).i32(0).f32(0.0);
        self.cache_write_args(exec, Some(write), &mut a)?;
        a.i32(0);
        Ok(a)
    }

    /// Launches the head-norm group keyed by `members[0]` (`FusePlan::groups`) as one
    /// `rms_norm_jobs_f32`: each member's `rms_norm_f32` arguments in 8-byte slots, its rows after
    /// the members' before it.
    pub(super) fn launch_norm_group(&self, exec: &Exec, members: &[usize]) -> Result<()> {
        let (max, slots) = (source::RN_MAX_JOBS, source::RN_JOB_SLOTS);
        if members.len() > max {
            return Err(backend_err(format!(
                "a norm group of {} launches (at most {max})",
                members.len()
            )));
        }
        let g = &exec.graph;
        let mut cell = vec![0u64; max * slots + max];
        let mut total = 0;
        for (j, &k) in members.iter().enumerate() {
            let key = NodeId::from_index(k);
            let (norm, a) = self.head_norm_args(exec, key, self.base(exec, key)?)?;
            let words: Vec<u64> = a.cells.iter().flatten().copied().collect();
            if words.len() != slots {
                return Err(backend_err(format!(
                    "rms_norm_f32 arguments in {} slots, rms_norm_jobs_f32 takes {slots}",
                    words.len()
                )));
            }
            let x = g.node(g.node(norm).inputs[0]);
            // fuse_plan groups rows narrower than 2,048 only: 256 threads, as rms_norm_f32.
            if x.shape().ne(0) >= 2048 {
                return Err(backend_err(
                    "a grouped head norm of 2,048 or more (1,024 threads)",
                ));
            }
            cell[j * slots..(j + 1) * slots].copy_from_slice(&words);
            let rows = x.shape().n_rows();
            cell[max * slots + j] = rows as u64;
            total += rows;
        }
        let mut a = Args::default();
        a.cells.push(cell);
        self.launch("rms_norm_jobs_f32", (total as u32, 1, 1), 256, &mut a)
    }

    /// The arguments of `rms_norm_f32` up to its RoPE ones: RMSNorm node `norm` writing `out`,
    /// the prepared layout at `xs` (0 for none) and the fused tail, if any (with the split planes
    /// of its input).
    pub(super) fn norm_args(
        &self,
        exec: &Exec,
        norm: NodeId,
        out: u64,
        xs: u64,
        tail: Option<fuse_plan::NormTail>,
    ) -> Result<Args> {
        let g = &exec.graph;
        let node = g.node(norm);
        let x = g.node(node.inputs[0]);
        let planes = tail.map_or(1, |t| t.planes);
        let x_ptr = self.norm_input_ptr(exec, norm, planes)?;
        let mut a = Args::default();
        a.ptr(x_ptr).layout(&x.layout);
        let eps = self.norm_weight_args(exec, norm, &mut a)?;
        a.ptr(out).i32(x.shape().ne(0) as i32).f32(eps).ptr(xs);
        match tail {
            Some(t) => {
                a.ptr(self.addr(exec, t.residual)?);
                match t.scale {
                    Some(s) => a.ptr(self.addr(exec, s)?).i32(code(g.node(s).dtype)),
                    None => a.ptr(0).i32(-1),
                };
            }
            None => {
                a.ptr(0).ptr(0).i32(-1);
            }
        }
        a.i32(planes as i32).i64(x.shape().n_elems() as i64);
        match tail.and_then(|t| t.next) {
            Some(n2) => {
                a.ptr(self.base(exec, n2)?);
                let eps2 = self.norm_weight_args(exec, n2, &mut a)?;
                a.f32(eps2);
            }
            None => {
                a.ptr(0).ptr(0).i32(-1).f32(0.0);
            }
        }
        Ok(a)
    }

    /// The storage RMSNorm node `norm` reads its rows from (with its layout): its input's, or
    /// with `planes` > 1 the split product's partial planes, left unsummed for this launch.
    fn norm_input_ptr(&self, exec: &Exec, norm: NodeId, planes: usize) -> Result<u64> {
        if planes > 1 {
            self.partials_ptr(exec)
        } else {
            self.base(exec, exec.graph.node(norm).inputs[0])
        }
    }

    /// Pushes RMSNorm node `norm`'s weight (pointer and type code, or none) and returns its eps.
    pub(super) fn norm_weight_args(&self, exec: &Exec, norm: NodeId, a: &mut Args) -> Result<f32> {
        let g = &exec.graph;
        let node = g.node(norm);
        let Op::RmsNorm { eps } = node.op else {
            return Err(backend_err(format!(
                "node '{}' is not an RMSNorm",
                node.label(norm)
            )));
        };
        match node.inputs.get(1) {
            Some(&w) => a.ptr(self.base(exec, w)?).i32(code(g.node(w).dtype)),
            None => a.ptr(0).i32(-1),
        };
        Ok(eps)
    }

    /// The split-K partial-sum scratch of the `_mma_` products.
    pub(super) fn partials_ptr(&self, exec: &Exec) -> Result<u64> {
        let part = exec
            .mma_partials
            .ok_or_else(|| backend_err("no scratch for split partial sums"))?;
        Ok(self.buf(part)?.ptr)
    }

    /// Launches `rms_norm_f32` for RMSNorm node `norm` with its complete arguments.
    pub(super) fn launch_norm_args(&self, exec: &Exec, norm: NodeId, a: &mut Args) -> Result<()> {
        let x = exec.graph.node(exec.graph.node(norm).inputs[0]);
        // One block per row; wide rows (the 5376-wide hidden state of a decode step is a
        // single row) get 1024 threads so the row is read in few dependent rounds.
        let threads = if x.shape().ne(0) >= 2048 { 1024 } else { 256 };
        self.launch(
            "rms_norm_f32",
            (x.shape().n_rows() as u32, 1, 1),
            threads,
            a,
        )
    }

    /// The MoE routing of `Fused::Route`, launched at the MoeWeights node `node` (writing `out`):
    /// one `moe_route_f32` block per token writes the Softmax node's probabilities, the TopK
    /// node's picks and the routing weights.
    pub(super) fn launch_route(
        &self,
        exec: &Exec,
        node: &Node,
        out: u64,
        softmax: NodeId,
        top_k: NodeId,
    ) -> Result<()> {
        let g = &exec.graph;
        let sm = g.node(softmax);
        let logits = g.node(sm.inputs[0]);
        let (Op::TopK(k), Op::MoeWeights { renormalize }) = (&g.node(top_k).op, &node.op) else {
            return Err(backend_err(
                "a fused route is a TopK's picks and the MoeWeights node that keys it",
            ));
        };
        let mut a = Args::default();
        a.ptr(self.base(exec, sm.inputs[0])?)
            .layout(&logits.layout)
            .ptr(self.base(exec, softmax)?)
            .i32(sm.shape().ne(0) as i32)
            .ptr(self.base(exec, top_k)?)
            .i32(*k as i32);
        match node.inputs.get(2) {
            Some(&s) => a.ptr(self.base(exec, s)?).i32(code(g.node(s).dtype)),
            None => a.ptr(0).i32(-1),
        };
        a.ptr(out).i32(i32::from(*renormalize)).ptr(self.err_word);
        self.launch(
            "moe_route_f32",
            (sm.shape().n_rows() as u32, 1, 1),
            source::SOFTMAX_THREADS,
            &mut a,
        )
    }
}
