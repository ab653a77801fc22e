//! Nodes, graphs and the builder that infers every op's output at build time.

use std::fmt;

use crate::error::{Error, Result};
use crate::op::{AttnMask, AttnParams, BinaryOp, DType, GluOp, Op, RopeParams, UnaryOp};
use crate::shape::{Layout, Shape, MAX_DIMS};

/// Index of a node in its graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) usize);

impl NodeId {
    /// The node's index in [`Graph::nodes`].
    pub fn index(self) -> usize {
        self.0
    }

    /// The id of the node at `index` of [`Graph::nodes`] (for backends walking a graph).
    pub fn from_index(index: usize) -> NodeId {
        NodeId(index)
    }
}

/// One node: an op applied to earlier nodes, with its inferred dtype and layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The op.
    pub op: Op,
    /// Input nodes, all earlier in the graph.
    pub inputs: Vec<NodeId>,
    /// Element type of the output.
    pub dtype: DType,
    /// Layout of the output within the storage of `root`.
    pub layout: Layout,
    /// The node owning the storage this output lives in (itself unless the op is an alias).
    pub root: NodeId,
    /// Name for bindings (leaves) and debugging (`blk.3.attn_out`).
    pub name: Option<String>,
}

impl Node {
    /// The output shape.
    pub fn shape(&self) -> Shape {
        self.layout.shape
    }

    /// The node's name, or `#index` if it has none.
    pub fn label(&self, id: NodeId) -> String {
        self.name.clone().unwrap_or_else(|| format!("#{}", id.0))
    }
}

/// A finished graph: nodes in topological order (every input precedes its users) and the
/// outputs the caller will read.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    nodes: Vec<Node>,
    outputs: Vec<NodeId>,
}

impl Graph {
    /// All nodes, inputs before users.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with id `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// The nodes whose values are read after a run.
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// Ids of all leaves of kind `op` (`Op::Input`, `Op::Weight` or `Op::State`).
    pub fn leaves(&self, op: &Op) -> Vec<NodeId> {
        (0..self.nodes.len())
            .filter(|&i| &self.nodes[i].op == op)
            .map(NodeId)
            .collect()
    }

    /// The leaf called `name`, if any.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .position(|n| n.op.is_leaf() && n.name.as_deref() == Some(name))
            .map(NodeId)
    }
}

impl fmt::Display for Graph {
    /// One line per node: `#3 rms_norm [256, 4] f32 <- #1, #2 (blk.0.attn_norm)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nodes.iter().enumerate() {
            let inputs: Vec<String> = n.inputs.iter().map(|id| format!("#{}", id.0)).collect();
            write!(f, "#{i} {} {} {}", n.op.name(), n.shape(), n.dtype)?;
            if !inputs.is_empty() {
                write!(f, " <- {}", inputs.join(", "))?;
            }
            if let Some(name) = &n.name {
                write!(f, " ({name})")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn shape_err(op: &'static str, reason: String) -> Error {
    Error::Shape { op, reason }
}

/// Builds a [`Graph`], checking every op's inputs and inferring its output when it is added.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<Node>,
}

impl GraphBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, id: NodeId) -> Result<&Node> {
        self.nodes.get(id.0).ok_or(Error::UnknownNode(id.0))
    }

    fn push(&mut self, op: Op, inputs: Vec<NodeId>, dtype: DType, shape: Shape) -> NodeId {
        let id = NodeId(self.nodes.len());
        self.nodes.push(Node {
            op,
            inputs,
            dtype,
            layout: Layout::contiguous(shape),
            root: id,
            name: None,
        });
        id
    }

    fn push_alias(&mut self, op: Op, inputs: Vec<NodeId>, dtype: DType, layout: Layout) -> NodeId {
        let root = self.nodes[inputs[0].0].root;
        let id = NodeId(self.nodes.len());
        self.nodes.push(Node {
            op,
            inputs,
            dtype,
            layout,
            root,
            name: None,
        });
        id
    }

    fn expect_dtype(&self, op: &'static str, input: usize, id: NodeId, ok: &[DType]) -> Result<()> {
        let found = self.get(id)?.dtype;
        if ok.contains(&found) {
            return Ok(());
        }
        let expected: Vec<&str> = ok.iter().map(|t| t.name()).collect();
        Err(Error::DType {
            op,
            input,
            expected: expected.join(" or "),
            found: found.name().to_string(),
        })
    }

    fn expect_f32(&self, op: &'static str, input: usize, id: NodeId) -> Result<()> {
        self.expect_dtype(op, input, id, &[DType::F32])
    }

    fn expect_rows_contiguous(&self, op: &'static str, id: NodeId) -> Result<()> {
        let node = self.get(id)?;
        if node.layout.rows_contiguous() {
            Ok(())
        } else {
            Err(shape_err(
                op,
                format!(
                    "input {} needs dense rows (stride of dim 0 is {})",
                    node.label(id),
                    node.layout.strides[0]
                ),
            ))
        }
    }

    fn leaf(&mut self, op: Op, name: &str, dtype: DType, shape: Shape) -> Result<NodeId> {
        if dtype.is_quantized() && !shape.ne(0).is_multiple_of(dtype.block_elems() as usize) {
            return Err(shape_err(
                op.name(),
                format!(
                    "'{name}': ne0 of {shape} is not a multiple of the {dtype} block size {}",
                    dtype.block_elems()
                ),
            ));
        }
        let id = self.push(op, Vec::new(), dtype, shape);
        self.nodes[id.0].name = Some(name.to_string());
        Ok(id)
    }

    /// A leaf the caller writes before each run.
    pub fn input(&mut self, name: &str, dtype: DType, shape: Shape) -> Result<NodeId> {
        self.expect_activation_dtype("input", dtype)?;
        self.leaf(Op::Input, name, dtype, shape)
    }

    /// A leaf bound to an uploaded weight buffer (any dtype).
    pub fn weight(&mut self, name: &str, dtype: DType, shape: Shape) -> Result<NodeId> {
        self.leaf(Op::Weight, name, dtype, shape)
    }

    /// A leaf bound to a persistent buffer (F32 or F16), updated in place by `write_rows`.
    pub fn state(&mut self, name: &str, dtype: DType, shape: Shape) -> Result<NodeId> {
        if !matches!(dtype, DType::F32 | DType::F16) {
            return Err(Error::DType {
                op: "state",
                input: 0,
                expected: "F32 or F16".into(),
                found: dtype.name().into(),
            });
        }
        self.leaf(Op::State, name, dtype, shape)
    }

    fn expect_activation_dtype(&self, op: &'static str, dtype: DType) -> Result<()> {
        if matches!(dtype, DType::F32 | DType::I32) {
            Ok(())
        } else {
            Err(Error::DType {
                op,
                input: 0,
                expected: "F32 or I32".into(),
                found: dtype.name().into(),
            })
        }
    }

    /// Names a node (for dumps and for finding leaves).
    pub fn set_name(&mut self, id: NodeId, name: impl Into<String>) -> Result<NodeId> {
        self.get(id)?;
        self.nodes[id.0].name = Some(name.into());
        Ok(id)
    }

    /// The shape of a node built so far.
    pub fn shape(&self, id: NodeId) -> Result<Shape> {
        Ok(self.get(id)?.shape())
    }

    /// The dtype of a node built so far.
    pub fn dtype(&self, id: NodeId) -> Result<DType> {
        Ok(self.get(id)?.dtype)
    }

    /// Rows `ids` of `table`, as f32.
    pub fn get_rows(&mut self, table: NodeId, ids: NodeId) -> Result<NodeId> {
        let (t, i) = (self.get(table)?.clone(), self.get(ids)?.clone());
        self.expect_dtype("get_rows", 1, ids, &[DType::I32])?;
        if t.shape().rank() > 2 || !t.layout.is_contiguous() {
            return Err(shape_err(
                "get_rows",
                format!("table {} must be a dense 2-D tensor", t.shape()),
            ));
        }
        if i.shape().rank() > 1 {
            return Err(shape_err(
                "get_rows",
                format!("ids {} must be 1-D", i.shape()),
            ));
        }
        let out = Shape::new(&[t.shape().ne(0), i.shape().ne(0)])?;
        Ok(self.push(Op::GetRows, vec![table, ids], DType::F32, out))
    }

    /// `w` (`[k, n]`) applied to each row of `x` (`[k, m, ...]`) → `[n, m, ...]`.
    pub fn matmul(&mut self, w: NodeId, x: NodeId) -> Result<NodeId> {
        let out = self.product_shape("matmul", w, x)?;
        Ok(self.push(Op::MatMul, vec![w, x], DType::F32, out))
    }

    /// [`GraphBuilder::matmul`] of Q8_0 or Q6_K weights with the activations quantized to 8 bits
    /// first (see [`Op::MatMulQ8`]): for drafters, whose products need not be exact.
    pub fn matmul_q8(&mut self, w: NodeId, x: NodeId) -> Result<NodeId> {
        let out = self.product_shape("matmul_q8", w, x)?;
        let wn = self.get(w)?;
        if !matches!(wn.dtype, DType::Q8_0 | DType::Q6_K) {
            return Err(shape_err(
                "matmul_q8",
                format!("weight must be Q8_0 or Q6_K, found {}", wn.dtype),
            ));
        }
        Ok(self.push(Op::MatMulQ8, vec![w, x], DType::F32, out))
    }

    /// The output shape of a product of weight `w` with activation rows `x`, checked.
    fn product_shape(&self, op: &'static str, w: NodeId, x: NodeId) -> Result<Shape> {
        let (wn, xn) = (self.get(w)?.clone(), self.get(x)?.clone());
        self.expect_f32(op, 1, x)?;
        self.expect_rows_contiguous(op, x)?;
        if wn.shape().rank() > 2 || !wn.layout.is_contiguous() {
            return Err(shape_err(
                op,
                format!("weight {} must be a dense 2-D tensor", wn.shape()),
            ));
        }
        if wn.shape().ne(0) != xn.shape().ne(0) {
            return Err(shape_err(
                op,
                format!(
                    "weight {} and input {} differ in dim 0",
                    wn.shape(),
                    xn.shape()
                ),
            ));
        }
        Ok(xn.shape().with(0, wn.shape().ne(1)))
    }

    /// Expert-indexed matmul (see [`Op::MatMulId`]).
    pub fn matmul_id(&mut self, w: NodeId, x: NodeId, ids: NodeId) -> Result<NodeId> {
        let (wn, xn, idn) = (
            self.get(w)?.clone(),
            self.get(x)?.clone(),
            self.get(ids)?.clone(),
        );
        self.expect_f32("matmul_id", 1, x)?;
        self.expect_dtype("matmul_id", 2, ids, &[DType::I32])?;
        self.expect_rows_contiguous("matmul_id", x)?;
        let (ws, xs, is) = (wn.shape(), xn.shape(), idn.shape());
        let fits = ws.rank() <= 3
            && wn.layout.is_contiguous()
            && ws.ne(0) == xs.ne(0)
            && is.rank() <= 2
            && xs.ne(3) == 1
            && (xs.ne(1) == 1 || xs.ne(1) == is.ne(0))
            && xs.ne(2) == is.ne(1);
        if !fits {
            return Err(shape_err(
                "matmul_id",
                format!("weight {ws} [k, n, experts], input {xs} [k, 1 or n_used, t] and ids {is} [n_used, t] do not fit"),
            ));
        }
        let out = Shape::new(&[ws.ne(1), is.ne(0), is.ne(1)])?;
        Ok(self.push(Op::MatMulId, vec![w, x, ids], DType::F32, out))
    }

    fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId> {
        let name = Op::Binary(op).name();
        let (an, bn) = (self.get(a)?.clone(), self.get(b)?.clone());
        self.expect_f32(name, 0, a)?;
        if bn.dtype != DType::F32
            && !(bn.op == Op::Weight && matches!(bn.dtype, DType::F16 | DType::BF16))
        {
            self.expect_f32(name, 1, b)?;
        }
        let (sa, sb) = (an.shape(), bn.shape());
        if (0..MAX_DIMS).any(|i| sb.ne(i) != sa.ne(i) && sb.ne(i) != 1) {
            return Err(shape_err(name, format!("{sb} does not broadcast to {sa}")));
        }
        Ok(self.push(Op::Binary(op), vec![a, b], DType::F32, sa))
    }

    /// `a + b`, `b` broadcast.
    pub fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Add, a, b)
    }

    /// `a · b`, `b` broadcast.
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// An element-wise function of `x`.
    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId> {
        self.expect_f32(Op::Unary(op).name(), 0, x)?;
        let shape = self.get(x)?.shape();
        Ok(self.push(Op::Unary(op), vec![x], DType::F32, shape))
    }

    /// `x · s`.
    pub fn scale(&mut self, x: NodeId, s: f32) -> Result<NodeId> {
        self.unary(UnaryOp::Scale(s), x)
    }

    /// GELU (tanh approximation).
    pub fn gelu(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Gelu, x)
    }

    /// SiLU.
    pub fn silu(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Silu, x)
    }

    /// `cap · tanh(x / cap)`.
    pub fn softcap(&mut self, x: NodeId, cap: f32) -> Result<NodeId> {
        self.unary(UnaryOp::Softcap(cap), x)
    }

    /// A gated linear unit of `gate` and `up` (equal shapes).
    pub fn glu(&mut self, op: GluOp, gate: NodeId, up: NodeId) -> Result<NodeId> {
        let name = Op::Glu(op).name();
        self.expect_f32(name, 0, gate)?;
        self.expect_f32(name, 1, up)?;
        let (sg, su) = (self.get(gate)?.shape(), self.get(up)?.shape());
        if sg != su {
            return Err(shape_err(name, format!("gate {sg} and up {su} differ")));
        }
        Ok(self.push(Op::Glu(op), vec![gate, up], DType::F32, sg))
    }

    /// RMS normalisation over dim 0, times `weight` (`[ne0]`) if given.
    pub fn rms_norm(&mut self, x: NodeId, weight: Option<NodeId>, eps: f32) -> Result<NodeId> {
        self.expect_f32("rms_norm", 0, x)?;
        self.expect_rows_contiguous("rms_norm", x)?;
        let shape = self.get(x)?.shape();
        let mut inputs = vec![x];
        if let Some(w) = weight {
            let ws = self.get(w)?.shape();
            self.expect_dtype("rms_norm", 1, w, &[DType::F32, DType::F16, DType::BF16])?;
            if ws.rank() != 1 || ws.ne(0) != shape.ne(0) {
                return Err(shape_err(
                    "rms_norm",
                    format!("weight {ws} does not match rows of {shape}"),
                ));
            }
            inputs.push(w);
        }
        Ok(self.push(Op::RmsNorm { eps }, inputs, DType::F32, shape))
    }

    /// NeoX RoPE of `x` (`[n_dims, n_heads, t]`) at positions `pos` (I32 `[t]`).
    pub fn rope(
        &mut self,
        x: NodeId,
        pos: NodeId,
        params: RopeParams,
        freq_factors: Option<NodeId>,
    ) -> Result<NodeId> {
        self.expect_f32("rope", 0, x)?;
        self.expect_dtype("rope", 1, pos, &[DType::I32])?;
        self.expect_rows_contiguous("rope", x)?;
        let (xs, ps) = (self.get(x)?.shape(), self.get(pos)?.shape());
        if params.n_rot == 0 || !params.n_rot.is_multiple_of(2) || params.n_rot > xs.ne(0) {
            return Err(shape_err(
                "rope",
                format!(
                    "n_rot {} must be even and in 2..={}",
                    params.n_rot,
                    xs.ne(0)
                ),
            ));
        }
        if ps.rank() != 1 || ps.ne(0) != xs.ne(2) || xs.ne(3) != 1 {
            return Err(shape_err(
                "rope",
                format!("positions {ps} do not match tokens of {xs} [dims, heads, tokens]"),
            ));
        }
        let mut inputs = vec![x, pos];
        if let Some(ff) = freq_factors {
            self.expect_f32("rope", 2, ff)?;
            let fs = self.get(ff)?.shape();
            if fs.rank() != 1 || fs.ne(0) != params.n_rot / 2 {
                return Err(shape_err(
                    "rope",
                    format!("freq_factors {fs} must be [{}]", params.n_rot / 2),
                ));
            }
            inputs.push(ff);
        }
        Ok(self.push(Op::Rope(params), inputs, DType::F32, xs))
    }

    /// Softmax over dim 0.
    pub fn softmax(&mut self, x: NodeId) -> Result<NodeId> {
        self.expect_f32("softmax", 0, x)?;
        let shape = self.get(x)?.shape();
        Ok(self.push(Op::Softmax, vec![x], DType::F32, shape))
    }

    /// Attention of `q` over `k`/`v` (see [`Op::Attention`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        q_pos: NodeId,
        n_kv: NodeId,
        mask: Option<NodeId>,
        params: AttnParams,
    ) -> Result<NodeId> {
        self.expect_f32("attention", 0, q)?;
        self.expect_dtype("attention", 1, k, &[DType::F32, DType::F16])?;
        self.expect_dtype("attention", 2, v, &[DType::F32, DType::F16])?;
        self.expect_dtype("attention", 3, q_pos, &[DType::I32])?;
        self.expect_dtype("attention", 4, n_kv, &[DType::I32])?;
        for id in [q, k, v] {
            self.expect_rows_contiguous("attention", id)?;
        }
        let (qs, ks, vs) = (
            self.get(q)?.shape(),
            self.get(k)?.shape(),
            self.get(v)?.shape(),
        );
        let (ps, ns) = (self.get(q_pos)?.shape(), self.get(n_kv)?.shape());
        let (n_head, n_head_kv, cap) = (qs.ne(1), ks.ne(1), ks.ne(2));
        let fits = qs.ne(0) == ks.ne(0)
            && vs.ne(1) == n_head_kv
            && vs.ne(2) == cap
            && n_head_kv > 0
            && n_head % n_head_kv == 0
            && qs.ne(3) == 1
            && ks.ne(3) == 1
            && vs.ne(3) == 1
            && ps.rank() == 1
            && ps.ne(0) == qs.ne(2)
            && ns.n_elems() == 1;
        if !fits {
            return Err(shape_err(
                "attention",
                format!("q {qs} [d, heads, t], k {ks} [d, kv_heads, cap], v {vs} [d_v, kv_heads, cap], q_pos {ps} [t], n_kv {ns} [1] do not fit"),
            ));
        }
        if let AttnMask::SlidingWindow { window: 0 } = params.mask {
            return Err(shape_err(
                "attention",
                "a sliding window of 0 positions sees nothing".into(),
            ));
        }
        let mut inputs = vec![q, k, v, q_pos, n_kv];
        match (params.mask, mask) {
            (AttnMask::Explicit, Some(m)) => {
                self.expect_f32("attention", 5, m)?;
                let ms = self.get(m)?.shape();
                if ms != Shape::new(&[cap, qs.ne(2)])? || !self.get(m)?.layout.is_contiguous() {
                    return Err(shape_err(
                        "attention",
                        format!("mask {ms} must be a dense [{cap}, {}]", qs.ne(2)),
                    ));
                }
                inputs.push(m);
            }
            (AttnMask::Explicit, None) => {
                return Err(shape_err(
                    "attention",
                    "an explicit mask needs a mask input".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(shape_err(
                    "attention",
                    "a mask input needs AttnMask::Explicit".into(),
                ))
            }
            (_, None) => {}
        }
        let out = Shape::new(&[vs.ne(0), n_head, qs.ne(2)])?;
        Ok(self.push(Op::Attention(params), inputs, DType::F32, out))
    }

    /// `a` and `b` joined along `dim` (all other dimensions equal).
    pub fn concat(&mut self, a: NodeId, b: NodeId, dim: usize) -> Result<NodeId> {
        self.expect_f32("concat", 0, a)?;
        self.expect_f32("concat", 1, b)?;
        let (sa, sb) = (self.get(a)?.shape(), self.get(b)?.shape());
        if dim >= MAX_DIMS || (0..MAX_DIMS).any(|i| i != dim && sa.ne(i) != sb.ne(i)) {
            return Err(shape_err(
                "concat",
                format!("{sa} and {sb} cannot be joined along dim {dim}"),
            ));
        }
        let out = sa.with(dim, sa.ne(dim) + sb.ne(dim));
        Ok(self.push(Op::Concat { dim }, vec![a, b], DType::F32, out))
    }

    /// A strided view of `x`: `offset` (elements, relative to `x`'s first element) and
    /// `strides` (elements of the underlying storage).
    pub fn view(
        &mut self,
        x: NodeId,
        shape: Shape,
        strides: [usize; MAX_DIMS],
        offset: usize,
    ) -> Result<NodeId> {
        let node = self.get(x)?.clone();
        if node.dtype.is_quantized() {
            return Err(shape_err(
                "view",
                format!(
                    "cannot view quantized {} tensor {}",
                    node.dtype,
                    node.label(x)
                ),
            ));
        }
        let layout = Layout {
            shape,
            strides,
            offset: node.layout.offset + offset,
        };
        let root_span = self.get(node.root)?.layout.span();
        if layout.span() > root_span {
            return Err(shape_err(
                "view",
                format!("view {shape} strides {strides:?} offset {offset} reaches element {} of a {root_span}-element buffer", layout.span()),
            ));
        }
        Ok(self.push_alias(Op::View, vec![x], node.dtype, layout))
    }

    /// `x` (dense) with another shape of the same element count.
    pub fn reshape(&mut self, x: NodeId, shape: Shape) -> Result<NodeId> {
        let node = self.get(x)?.clone();
        if !node.layout.is_contiguous() {
            return Err(shape_err(
                "reshape",
                format!("{} is not dense; make it contiguous first", node.shape()),
            ));
        }
        if shape.n_elems() != node.shape().n_elems() {
            return Err(shape_err(
                "reshape",
                format!(
                    "{} has {} elements, {shape} has {}",
                    node.shape(),
                    node.shape().n_elems(),
                    shape.n_elems()
                ),
            ));
        }
        if node.dtype.is_quantized()
            && !shape
                .ne(0)
                .is_multiple_of(node.dtype.block_elems() as usize)
        {
            return Err(shape_err(
                "reshape",
                format!(
                    "{shape}: ne0 not a multiple of the {} block size",
                    node.dtype
                ),
            ));
        }
        let layout = Layout {
            shape,
            strides: shape.contiguous_strides(),
            offset: node.layout.offset,
        };
        Ok(self.push_alias(Op::Reshape, vec![x], node.dtype, layout))
    }

    /// `x` with dimensions reordered: output dim `i` is input dim `axes[i]`.
    pub fn permute(&mut self, x: NodeId, axes: [usize; MAX_DIMS]) -> Result<NodeId> {
        let node = self.get(x)?.clone();
        let mut seen = [false; MAX_DIMS];
        for &a in &axes {
            if a >= MAX_DIMS || std::mem::replace(&mut seen[a], true) {
                return Err(shape_err(
                    "permute",
                    format!("{axes:?} is not a permutation of 0..4"),
                ));
            }
        }
        if node.dtype.is_quantized() {
            return Err(shape_err(
                "permute",
                format!("cannot permute quantized tensor {}", node.label(x)),
            ));
        }
        let d = node.shape().dims();
        let s = node.layout.strides;
        let layout = Layout {
            shape: Shape::from_dims(axes.map(|a| d[a])),
            strides: axes.map(|a| s[a]),
            offset: node.layout.offset,
        };
        Ok(self.push_alias(Op::Permute(axes), vec![x], node.dtype, layout))
    }

    /// A dense f32 copy of `x`.
    pub fn contiguous(&mut self, x: NodeId) -> Result<NodeId> {
        self.expect_f32("contiguous", 0, x)?;
        let shape = self.get(x)?.shape();
        Ok(self.push(Op::Contiguous, vec![x], DType::F32, shape))
    }

    /// Writes the rows of `src` into rows `slots` of the state `dst`, in place.
    pub fn write_rows(&mut self, dst: NodeId, src: NodeId, slots: NodeId) -> Result<NodeId> {
        let dn = self.get(dst)?.clone();
        if self.get(dn.root)?.op != Op::State || !dn.layout.is_contiguous() {
            return Err(shape_err(
                "write_rows",
                format!("destination {} must be a dense state", dn.label(dst)),
            ));
        }
        self.expect_f32("write_rows", 1, src)?;
        self.expect_rows_contiguous("write_rows", src)?;
        self.expect_dtype("write_rows", 2, slots, &[DType::I32])?;
        let (ds, ss, ls) = (dn.shape(), self.get(src)?.shape(), self.get(slots)?.shape());
        let row = ds.ne(0);
        let src_row = ss.ne(0);
        let n = ss.n_rows();
        if ds.n_elems() % row != 0 || src_row != row || ls.n_elems() != n || ls.rank() != 1 {
            return Err(shape_err(
                "write_rows",
                format!("destination {ds} (rows of {row}), source {ss} and slots {ls} do not fit"),
            ));
        }
        Ok(self.push_alias(Op::WriteRows, vec![dst, src, slots], dn.dtype, dn.layout))
    }

    /// Index of the largest element of each row.
    pub fn argmax(&mut self, x: NodeId) -> Result<NodeId> {
        self.expect_f32("argmax", 0, x)?;
        let d = self.get(x)?.shape().dims();
        Ok(self.push(
            Op::Argmax,
            vec![x],
            DType::I32,
            Shape::from_dims([d[1], d[2], d[3], 1]),
        ))
    }

    /// Indices of the `k` largest elements of each row, largest first.
    pub fn top_k(&mut self, x: NodeId, k: usize) -> Result<NodeId> {
        self.expect_f32("top_k", 0, x)?;
        let shape = self.get(x)?.shape();
        if k == 0 || k > shape.ne(0) {
            return Err(shape_err(
                "top_k",
                format!("k = {k} must be in 1..={}", shape.ne(0)),
            ));
        }
        Ok(self.push(Op::TopK(k), vec![x], DType::I32, shape.with(0, k)))
    }

    /// MoE routing weights (see [`Op::MoeWeights`]).
    pub fn moe_weights(
        &mut self,
        probs: NodeId,
        ids: NodeId,
        scale: Option<NodeId>,
        renormalize: bool,
    ) -> Result<NodeId> {
        self.expect_f32("moe_weights", 0, probs)?;
        self.expect_dtype("moe_weights", 1, ids, &[DType::I32])?;
        let (ps, is) = (self.get(probs)?.shape(), self.get(ids)?.shape());
        if ps.rank() > 2 || is.rank() > 2 || ps.ne(1) != is.ne(1) || is.ne(0) > ps.ne(0) {
            return Err(shape_err(
                "moe_weights",
                format!("probs {ps} [experts, t] and ids {is} [k, t] do not fit"),
            ));
        }
        let mut inputs = vec![probs, ids];
        if let Some(s) = scale {
            self.expect_dtype("moe_weights", 2, s, &[DType::F32, DType::F16, DType::BF16])?;
            let ss = self.get(s)?.shape();
            if ss.rank() != 1 || ss.ne(0) != ps.ne(0) {
                return Err(shape_err(
                    "moe_weights",
                    format!("scale {ss} must be [{}]", ps.ne(0)),
                ));
            }
            inputs.push(s);
        }
        Ok(self.push(Op::MoeWeights { renormalize }, inputs, DType::F32, is))
    }

    /// The experts' weighted sum of `x` [h, k, t] by `w` [k, t] (see [`Op::MoeSum`]).
    pub fn moe_sum(&mut self, x: NodeId, w: NodeId) -> Result<NodeId> {
        self.expect_f32("moe_sum", 0, x)?;
        self.expect_f32("moe_sum", 1, w)?;
        let (xs, ws) = (self.get(x)?.shape(), self.get(w)?.shape());
        if xs.rank() > 3 || ws.rank() > 2 || xs.ne(1) != ws.ne(0) || xs.ne(2) != ws.ne(1) {
            return Err(shape_err(
                "moe_sum",
                format!("x {xs} [h, k, t] and w {ws} [k, t] do not fit"),
            ));
        }
        let shape = Shape::new(&[xs.ne(0), xs.ne(2)])?;
        Ok(self.push(Op::MoeSum, vec![x, w], DType::F32, shape))
    }

    /// Finishes the graph with the nodes the caller will read.
    pub fn finish(self, outputs: &[NodeId]) -> Result<Graph> {
        for &o in outputs {
            self.get(o)?;
        }
        Ok(Graph {
            nodes: self.nodes,
            outputs: outputs.to_vec(),
        })
    }
}
