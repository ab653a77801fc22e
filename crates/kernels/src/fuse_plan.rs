//! Launches the CUDA backend folds together: a layer's post-norm, its residual add and the layer
//! scale after it (`x = (residual + rms_norm(o) · w) · s` in Gemma 4) and the norm of `x` that
//! follows; a head's q or k norm, its RoPE and its cache write; each run as one `rms_norm_f32`
//! launch; and a split product's plane sum with the residual Add after it, one `mmv_sum_splits`
//! launch; a MoE router's softmax, top-k and routing weights, one `moe_route_f32` launch; the
//! other nodes are skipped. A pure function of the graph, so
//! the plan is tested without a GPU; the fused kernel does the separate ops' arithmetic in their
//! order, so results are the same bits.

use std::collections::{HashMap, HashSet};

use graph::{BinaryOp, DType, Graph, Hold, Node, NodeId, Op};

use crate::mma_plan::{uniform_row_stride, MmaPlan};

/// One fused post-norm tail, launched at the node it is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NormTail {
    /// The RMSNorm node (skipped): its input, weight and eps drive the kernel.
    pub norm: NodeId,
    /// The residual added to the norm's output (dense rows of the same shape).
    pub residual: NodeId,
    /// The one-element scale the sum is multiplied by, if the Mul after the Add is folded too.
    pub scale: Option<NodeId>,
    /// Split-K planes of the norm's input: when the norm's input is a split product run
    /// right before it, the kernel sums its partial planes (in plane order, as `mmv_sum_splits`)
    /// instead of reading the summed output, and the product skips its sum launch. 1 otherwise.
    pub planes: usize,
    /// The RMSNorm node (skipped) that normalizes this tail's output next, when it runs right
    /// after it: the next layer's attention norm or the FFN norm, done by the same launch.
    pub next: Option<NodeId>,
}

/// A fused launch (`rms_norm_f32`, or `mmv_sum_splits` for [`Fused::SumAdd`]), run at the node it
/// is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fused {
    /// A post-norm tail: `(residual + norm) · scale`.
    Tail(NormTail),
    /// A head norm (skipped RMSNorm node `norm`) and the RoPE node it is keyed by.
    Rope {
        /// The RMSNorm node.
        norm: NodeId,
        /// The WriteRows node (skipped) that stores the result in a cache, if folded in too.
        write: Option<NodeId>,
    },
    /// An RMSNorm node (the key) whose rows go straight into a cache: the WriteRows node `write`
    /// (skipped) that stored them.
    NormWrite {
        /// The WriteRows node.
        write: NodeId,
    },
    /// An Add node (the key) of `residual` and a split product run right before it and read by
    /// nothing else: one `mmv_sum_splits` launch sums the product's planes and adds the residual
    /// (the product skips its own sum; a DFlash layer's attention output and FFN down).
    SumAdd {
        /// The other operand of the Add (dense rows of its shape).
        residual: NodeId,
        /// The product's split planes.
        planes: usize,
    },
    /// A MoeWeights node (the key) whose probabilities are a Softmax read by nothing but it and
    /// the TopK of its picks: one `moe_route_f32` launch writes all three (both skipped).
    Route {
        /// The Softmax node.
        softmax: NodeId,
        /// The TopK node.
        top_k: NodeId,
    },
}

/// Longest rows the fused norm + RoPE holds (`RN_ROPE_MAX` in ops.cu).
pub(crate) const ROPE_ROW_MAX: usize = 1024;

/// The fusions of one loaded graph (node indices).
#[derive(Debug, Default)]
pub(crate) struct FusePlan {
    /// Nodes whose launch is folded into a later node's.
    pub skip: HashSet<usize>,
    /// Nodes that launch a fused norm instead of their own op.
    pub fused: HashMap<usize, Fused>,
    /// Split products (`_mma_`, or q8 on tensor cores) whose partial planes a later launch sums:
    /// a fused tail, or the `mmv_sum_splits` of a [`Fused::SumAdd`] (the product launches none).
    pub unsummed: HashSet<usize>,
    /// Head-norm launches (`Fused::Rope`, `Fused::NormWrite`) run as one `rms_norm_jobs_f32`
    /// launch at the first: its key → every member's key in order (the later ones are in `skip`).
    pub groups: HashMap<usize, Vec<usize>>,
}

impl FusePlan {
    /// What the memory plan must keep beyond graph order, for the fused launches whose blocks
    /// write where other blocks' inputs may be: a routing ([`Fused::Route`]) reads each token's
    /// logits row in its own block but writes the routing weights, `k` a token, at offsets that
    /// fall in other tokens' rows of a buffer the size of the logits. The Softmax's input keeps
    /// its slot until the launch has run (else the weights could take the slot of logits that
    /// die at the Softmax). The norm launches need none: a block reads its whole row before it
    /// writes it, and no other block touches that row.
    pub(crate) fn holds(&self) -> Vec<Hold> {
        self.fused
            .iter()
            .filter_map(|(&key, f)| match *f {
                Fused::Route { softmax, .. } => Some(Hold {
                    nodes: vec![softmax.index()],
                    until: key,
                }),
                _ => None,
            })
            .collect()
    }

    /// For every node of `graph`, the index of the node whose launch computes it: its own, or
    /// for a skipped node the fused launch (or head-norm group) that folds it in. `None` when a
    /// skipped node is folded by nothing this knows of.
    pub(crate) fn launchers(&self, graph: &Graph) -> Option<Vec<usize>> {
        let nodes = graph.nodes();
        let mut at: Vec<usize> = (0..nodes.len()).collect();
        for (&key, fused) in &self.fused {
            let mut covered = Vec::new();
            match *fused {
                Fused::Tail(t) => {
                    covered.push(t.norm.index());
                    covered.extend(t.next.map(|n| n.index()));
                    // With a scale the Add before the keyed Mul is folded too.
                    if t.scale.is_some() {
                        covered.extend(
                            nodes[key]
                                .inputs
                                .iter()
                                .map(|x| x.index())
                                .filter(|x| self.skip.contains(x) && *x != t.norm.index()),
                        );
                    }
                }
                Fused::Rope { norm, write } => {
                    covered.push(norm.index());
                    covered.extend(write.map(|w| w.index()));
                }
                Fused::NormWrite { write } => covered.push(write.index()),
                Fused::SumAdd { .. } => {}
                Fused::Route { softmax, top_k } => {
                    covered.extend([softmax.index(), top_k.index()]);
                }
            }
            for c in covered {
                at[c] = key;
            }
        }
        for (&head, members) in &self.groups {
            for a in at.iter_mut() {
                if members.contains(a) {
                    *a = head;
                }
            }
        }
        self.skip.iter().all(|&s| at[s] != s).then_some(at)
    }
}

/// Launches the CUDA backend would fold away in `graph` with its default settings (mma products
/// on, the GEMM route available, `SPECULA_FUSE` not 0): skipped nodes plus split sums done by the
/// norm or Add reading them. A pure function, so CI checks without a GPU that a model's step
/// graph keeps its fusions. (Without libcublas, graphs of 64 rows or more fold differently: their
/// products stay on the `_mma_` kernels.)
pub fn planned_folds(graph: &Graph) -> usize {
    let (_, p) = default_plans(graph);
    p.skip.len() + p.unsummed.len()
}

/// The mma and fuse plans the CUDA backend would make for `graph` with its default settings (the
/// `planned_*` checks).
pub(crate) fn default_plans(graph: &Graph) -> (MmaPlan, FusePlan) {
    let mma = crate::mma_plan::plan(&crate::mma_plan::MmaConfig::default(), graph);
    let fuse = plan_for(graph, &mma);
    (mma, fuse)
}

/// The MoE routings (`Fused::Route`) the CUDA backend would launch as one kernel each in
/// `graph` with its default settings; as [`planned_folds`], for CI checks of a model's graph.
pub fn planned_routes(graph: &Graph) -> usize {
    let (_, p) = default_plans(graph);
    p.fused
        .values()
        .filter(|f| matches!(f, Fused::Route { .. }))
        .count()
}

/// [`plan`] for a graph whose `_mma_` products are planned by `mma`: its preparing norms are
/// kept, its split products may leave their planes to a tail.
pub(crate) fn plan_for(graph: &Graph, mma: &MmaPlan) -> FusePlan {
    let mma_splits = mma
        .products
        .iter()
        .map(|(&i, mi)| (i, crate::source::mma_k_splits(mi.k)));
    // The q8 products split on tensor cores only (the per-warp kernel writes `out` itself).
    let q8_splits = mma
        .q8
        .iter()
        .filter(|(_, qi)| qi.tensor_cores)
        .map(|(&i, qi)| (i, qi.k_splits));
    let splits = mma_splits
        .chain(q8_splits)
        .filter(|&(_, s)| s > 1)
        .collect();
    plan(graph, &mma.norms, &splits)
}

/// Finds `Add(residual, product)` where a split product immediately precedes the Add and has no
/// other reader, the residual and the product dense F32 rows of the Add's shape
/// ([`Fused::SumAdd`]).
///
/// Finds `Add(residual, RmsNorm(x))` where the norm immediately precedes the Add and has no
/// other reader (nor is an output, nor writes prepared activations: `keep`), the residual is
/// dense F32 rows of the same shape; and folds a following `Mul(sum, s)` by a one-element scale
/// when the Add has no other reader. Adjacency (only leaves between) means no other node runs
/// between the folded ones, so no buffer the fused launch reads can have been reused in between.
///
/// `splits` maps the split products (`_mma_`, and q8 on tensor cores) to their number of planes:
/// a tail whose norm reads one, run right before the norm and read by nothing else, sums the
/// planes itself.
pub(crate) fn plan(
    graph: &Graph,
    keep: &HashSet<usize>,
    splits: &HashMap<usize, usize>,
) -> FusePlan {
    let nodes = graph.nodes();
    let mut readers = vec![0usize; nodes.len()];
    for node in nodes {
        for &i in &node.inputs {
            readers[i.index()] += 1;
        }
    }
    for &o in graph.outputs() {
        readers[o.index()] += 1;
    }
    // Leaves (inputs, weights, states) launch nothing and write nothing while a graph runs, so
    // they may sit between folded nodes (a weight is often created right before its first use).
    let launches = |k: &usize| !matches!(nodes[*k].op, Op::Input | Op::Weight | Op::State);
    let mut p = FusePlan::default();
    // Norms taken as a tail's `next`, and that tail's key.
    let mut next_of: HashMap<usize, usize> = HashMap::new();
    let single = |k: usize| readers[k] == 1;
    for (i, node) in nodes.iter().enumerate() {
        if matches!(node.op, Op::Rope(_)) {
            // A head norm right before its RoPE: `Rope(RmsNorm(x))`, the norm read by nothing else.
            let j = node.inputs[0].index();
            let norm = &nodes[j];
            let adjacent = (0..i).rev().find(launches) == Some(j);
            if adjacent
                && matches!(norm.op, Op::RmsNorm { .. })
                && single(j)
                && !keep.contains(&j)
                && norm.shape().ne(0) <= ROPE_ROW_MAX
                && dense(graph.node(norm.inputs[0]))
            {
                p.skip.insert(j);
                p.fused.insert(
                    i,
                    Fused::Rope {
                        norm: NodeId::from_index(j),
                        write: None,
                    },
                );
            }
            continue;
        }
        if !matches!(node.op, Op::Binary(BinaryOp::Add)) {
            continue;
        }
        let Some(j) = (0..i).rev().find(launches) else {
            continue;
        };
        let Some(pos) = node.inputs.iter().position(|x| x.index() == j) else {
            continue;
        };
        let residual = node.inputs[1 - pos];
        if let Some(&planes) = splits.get(&j) {
            // `Add(residual, product)`: the sum of the planes and the add in one launch.
            if single(j)
                && residual.index() != j
                && dense_rows_like(graph.node(residual), node)
                && dense_rows_like(&nodes[j], node)
            {
                p.unsummed.insert(j);
                p.fused.insert(i, Fused::SumAdd { residual, planes });
            }
            continue;
        }
        let norm = &nodes[j];
        if !matches!(norm.op, Op::RmsNorm { .. })
            || !single(j)
            || keep.contains(&j)
            || residual.index() == j
            || !dense_rows_like(graph.node(residual), node)
            || !dense(graph.node(norm.inputs[0]))
            || norm.shape() != node.shape()
        {
            continue;
        }
        // A norm an earlier tail already does as its `next` (the MoE FFN: the post-norm of the
        // summed expert outputs follows their tail) is this tail's own: the earlier tail leaves
        // it, so it is computed once.
        if let Some(prev) = next_of.remove(&j) {
            if let Some(Fused::Tail(t)) = p.fused.get_mut(&prev) {
                t.next = None;
            }
        }
        let mut tail = NormTail {
            norm: NodeId::from_index(j),
            residual,
            scale: None,
            planes: 1,
            next: None,
        };
        let x = norm.inputs[0].index();
        if let Some(&planes) = splits.get(&x) {
            if single(x) && (0..j).rev().find(launches) == Some(x) {
                tail.planes = planes;
                p.unsummed.insert(x);
            }
        }
        let mut at = i;
        if let Some(next_i) = (i + 1..nodes.len()).find(launches) {
            let next = &nodes[next_i];
            if matches!(next.op, Op::Binary(BinaryOp::Mul)) && single(i) {
                if let Some(q) = next.inputs.iter().position(|x| x.index() == i) {
                    let s = next.inputs[1 - q];
                    let sn = graph.node(s);
                    let scalar = sn.shape().n_elems() == 1
                        && matches!(sn.dtype, DType::F32 | DType::F16 | DType::BF16)
                        && next.shape() == node.shape();
                    if scalar {
                        p.skip.insert(i);
                        tail.scale = Some(s);
                        at = next_i;
                    }
                }
            }
        }
        if let Some(n2) = (at + 1..nodes.len()).find(launches) {
            let next = &nodes[n2];
            if matches!(next.op, Op::RmsNorm { .. })
                && next.inputs[0].index() == at
                && next.shape() == nodes[at].shape()
            {
                tail.next = Some(NodeId::from_index(n2));
                p.skip.insert(n2);
                next_of.insert(n2, at);
            }
        }
        p.skip.insert(j);
        p.fused.insert(at, Fused::Tail(tail));
    }
    fold_cache_writes(graph, &readers, keep, &mut p);
    fold_routes(graph, &readers, &mut p);
    group_head_norms(graph, &mut p);
    p
}

/// Finds `MoeWeights(probs, TopK(probs), scale?)` with `probs = Softmax(logits)` read by those
/// two alone ([`Fused::Route`]): the Softmax, the TopK and the MoeWeights launch one after another
/// (only leaves between), and nothing before the MoeWeights reads the picks, so one launch there
/// computes all three, and no buffer it writes can hold a value still to be read in between.
fn fold_routes(graph: &Graph, readers: &[usize], p: &mut FusePlan) {
    let nodes = graph.nodes();
    let launches = |k: usize| !matches!(nodes[k].op, Op::Input | Op::Weight | Op::State);
    for (i, node) in nodes.iter().enumerate() {
        if !matches!(node.op, Op::MoeWeights { .. }) {
            continue;
        }
        let (probs, picks) = (node.inputs[0].index(), node.inputs[1].index());
        let (sm, tk) = (&nodes[probs], &nodes[picks]);
        let between: Vec<usize> = (probs + 1..i).filter(|&k| launches(k)).collect();
        let picks_unread_before = nodes[..i]
            .iter()
            .all(|n| n.inputs.iter().all(|x| x.index() != picks));
        let fits = matches!(sm.op, Op::Softmax)
            && matches!(tk.op, Op::TopK(_))
            && tk.inputs[0].index() == probs
            && readers[probs] == 2
            && between == [picks]
            && picks_unread_before
            && sm.dtype == DType::F32
            && sm.layout.offset == 0
            && tk.layout.offset == 0
            && sm.shape().n_rows() == tk.shape().n_rows()
            && !p.skip.contains(&probs)
            && !p.skip.contains(&picks)
            && !p.fused.contains_key(&probs)
            && !p.fused.contains_key(&picks);
        if fits {
            p.skip.insert(probs);
            p.skip.insert(picks);
            p.fused.insert(
                i,
                Fused::Route {
                    softmax: NodeId::from_index(probs),
                    top_k: NodeId::from_index(picks),
                },
            );
        }
    }
}

/// Groups consecutive head-norm launches (a layer's q norm + RoPE, k norm + RoPE + cache write,
/// v norm + cache write, once its products run first) of batches up to
/// `source::RN_JOBS_MAX_TOKENS` tokens into one launch at the first, up to `source::RN_MAX_JOBS`:
/// only leaves, views and skipped nodes between them, so nothing runs in between. The later
/// members must write nothing but cache rows (an output buffer of theirs could still hold a value
/// the first member reads: the memory plan reuses buffers by graph order) and no cache an earlier
/// member reads, read nothing an earlier member writes, and read only what exists at the first
/// member's position: the jobs of one launch run at the same time. Rows narrower than 2,048 only
/// (one launch has one block size; `rms_norm_f32` takes 256 threads there).
fn group_head_norms(graph: &Graph, p: &mut FusePlan) {
    let nodes = graph.nodes();
    let leaf = |k: usize| matches!(nodes[k].op, Op::Input | Op::Weight | Op::State);
    let no_kernel = |k: usize| {
        leaf(k)
            || p.skip.contains(&k)
            || matches!(nodes[k].op, Op::View | Op::Reshape | Op::Permute(_))
    };
    // A member's fused nodes, its writes' storage (roots) and what it reads (roots of inputs
    // from outside its fused nodes).
    let member = |k: usize| -> Option<(Vec<usize>, Option<usize>)> {
        let d = nodes[k].shape().dims();
        if d[2] * d[3] > crate::source::RN_JOBS_MAX_TOKENS {
            return None;
        }
        let (mut own, write, norm) = match p.fused.get(&k)? {
            Fused::Rope { norm, write } => (vec![k, norm.index()], *write, norm.index()),
            Fused::NormWrite { write } => (vec![k], Some(*write), k),
            Fused::Tail(_) | Fused::SumAdd { .. } | Fused::Route { .. } => return None,
        };
        if graph.node(nodes[norm].inputs[0]).shape().ne(0) >= 2048 {
            return None;
        }
        if let Some(w) = write {
            own.push(w.index());
            own.push(nodes[w.index()].inputs[1].index());
        }
        Some((
            own,
            write.map(|w| graph.node(nodes[w.index()].inputs[0]).root.index()),
        ))
    };
    let reads = |own: &[usize]| -> Vec<usize> {
        own.iter()
            .flat_map(|&o| nodes[o].inputs.iter().map(|x| x.index()))
            .filter(|x| !own.contains(x))
            .map(|x| graph.node(NodeId::from_index(x)).root.index())
            .collect()
    };
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group: Vec<usize> = Vec::new();
    let mut written: HashSet<usize> = HashSet::new();
    let mut read: HashSet<usize> = HashSet::new();
    for k in 0..nodes.len() {
        if no_kernel(k) {
            continue;
        }
        let m = member(k);
        let joins = match (&m, group.first()) {
            (Some((own, state)), Some(&first)) => {
                state.is_some_and(|s| !read.contains(&s))
                    && group.len() < crate::source::RN_MAX_JOBS
                    && reads(own)
                        .iter()
                        .all(|&r| !written.contains(&r) && (r < first || leaf(r)))
            }
            _ => false,
        };
        if !joins {
            groups.push(std::mem::take(&mut group));
            written.clear();
            read.clear();
            written.insert(k);
        }
        if let Some((own, state)) = m {
            written.extend(state);
            read.extend(reads(&own));
            group.push(k);
        }
    }
    groups.push(group);
    for g in groups.into_iter().filter(|g| g.len() > 1) {
        for &k in &g[1..] {
            p.skip.insert(k);
        }
        p.groups.insert(g[0], g);
    }
}

/// Folds `WriteRows(state, Reshape(k), slots)` into the launch that produces `k` — a fused head
/// norm + RoPE, or a plain RMSNorm of head rows (V) — so the rows go straight into the cache. The
/// write then happens at `k`'s position, earlier than the WriteRows node: allowed only when no
/// node in between touches the state, and `k` and its reshape have no other reader.
fn fold_cache_writes(graph: &Graph, readers: &[usize], keep: &HashSet<usize>, p: &mut FusePlan) {
    let nodes = graph.nodes();
    for (i, node) in nodes.iter().enumerate() {
        if !matches!(node.op, Op::WriteRows) || !matches!(node.dtype, DType::F32 | DType::F16) {
            continue;
        }
        let (src, slots) = (node.inputs[1], node.inputs[2]);
        // The cache's storage: the destination may itself be a view of the state.
        let state = graph.node(node.inputs[0]).root;
        let reshape = &nodes[src.index()];
        if !matches!(reshape.op, Op::Reshape) || readers[src.index()] != 1 {
            continue;
        }
        let k = reshape.inputs[0].index();
        if readers[k] != 1 || p.skip.contains(&k) || keep.contains(&k) || slots.index() > k {
            continue;
        }
        // The kernel writes head rows of n, n_heads of them per token and one slot per token:
        // the reshape must put one token's heads in one cache row ([n, heads, t] → [n·heads, t]).
        let d = nodes[k].shape().dims();
        let rows_are_tokens =
            reshape.shape().ne(0) == d[0] * d[1] && reshape.shape().n_rows() == d[2] * d[3];
        // Declaring the state (a leaf) is no access; any op reading it or a view of it is.
        let touches = |n: &Node| {
            !matches!(n.op, Op::Input | Op::Weight | Op::State)
                && (n.root == state || n.inputs.iter().any(|x| graph.node(*x).root == state))
        };
        let untouched = !nodes[k + 1..i].iter().any(touches);
        if !rows_are_tokens || !untouched || d[0] > ROPE_ROW_MAX || !dense(&nodes[k]) {
            continue;
        }
        let write = NodeId::from_index(i);
        let folded = match p.fused.get(&k) {
            Some(Fused::Rope { norm, write: None }) => Some(Fused::Rope {
                norm: *norm,
                write: Some(write),
            }),
            None if matches!(nodes[k].op, Op::RmsNorm { .. }) => Some(Fused::NormWrite { write }),
            _ => None,
        };
        if let Some(f) = folded {
            p.fused.insert(k, f);
            p.skip.insert(i);
        }
    }
}

/// Whether `x` is F32 with the shape of `like` and dense (see [`dense`]).
fn dense_rows_like(x: &Node, like: &Node) -> bool {
    x.dtype == DType::F32 && x.shape() == like.shape() && dense(x)
}

/// Whether `x`'s rows of `ne0` elements lie back to back from the start of its storage. A fused
/// launch's output may reuse the buffer of a norm input or residual that dies at the folded
/// nodes; with both dense from offset 0, each block then reads and writes the same row, which
/// the kernel does in that order.
fn dense(x: &Node) -> bool {
    let n = x.shape().ne(0) as i64;
    x.layout.offset == 0
        && x.layout.strides[0] == 1
        && (x.shape().n_rows() == 1 || uniform_row_stride(&x.layout) == Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_graph::{input, state, weight};
    use graph::{GraphBuilder, Shape};

    /// A MoE router's softmax, top-k and weights fold into one launch at the weights; not where
    /// the probabilities have a third reader, or something launches between the three.
    #[test]
    fn a_router_softmax_top_k_and_weights_fold_into_one_launch() {
        let route = |third_reader: bool, between: bool| {
            let mut g = GraphBuilder::new();
            let logits = input(&mut g, "logits", DType::F32, &[16, 3]);
            let probs = g.softmax(logits).unwrap();
            let ids = g.top_k(probs, 4).unwrap();
            if between {
                g.scale(logits, 2.0).unwrap();
            }
            // Created between the TopK and the weights, as the model graph does.
            let scale = weight(&mut g, "scale", DType::F32, &[16]);
            let w = g.moe_weights(probs, ids, Some(scale), true).unwrap();
            let mut outs = vec![w, ids];
            if third_reader {
                outs.push(probs);
            }
            let graph = g.finish(&outs).unwrap();
            let p = plan(&graph, &HashSet::new(), &HashMap::new());
            (p, probs, ids, w)
        };
        let (p, probs, ids, w) = route(false, false);
        assert_eq!(p.skip, HashSet::from([probs.index(), ids.index()]));
        assert_eq!(
            p.fused.get(&w.index()),
            Some(&Fused::Route {
                softmax: probs,
                top_k: ids
            })
        );
        for (third, between) in [(true, false), (false, true)] {
            let (p, ..) = route(third, between);
            assert!(p.fused.is_empty() && p.skip.is_empty(), "{third} {between}");
        }
    }

    /// The routing weights never take the slot of computed logits that die at the Softmax: the
    /// fused launch writes them while other tokens' blocks may still read their logits.
    #[test]
    fn a_fused_routing_holds_its_logits_until_it_runs() {
        let mut g = GraphBuilder::new();
        let x = input(&mut g, "x", DType::F32, &[16, 8]);
        let logits = g.scale(x, 0.5).unwrap();
        let probs = g.softmax(logits).unwrap();
        let ids = g.top_k(probs, 4).unwrap();
        let w = g.moe_weights(probs, ids, None, true).unwrap();
        let graph = g.finish(&[w, ids]).unwrap();
        let p = plan(&graph, &HashSet::new(), &HashMap::new());
        assert!(matches!(p.fused.get(&w.index()), Some(Fused::Route { .. })));
        let slot = |m: &graph::MemoryPlan, n: NodeId| m.storage[n.index()].clone();
        let free = graph::MemoryPlan::new(&graph);
        assert_eq!(
            slot(&free, w),
            slot(&free, logits),
            "graph order reuses the slot"
        );
        let held = graph::MemoryPlan::with_holds(&graph, &p.holds());
        assert_ne!(slot(&held, w), slot(&held, logits));
    }

    /// Gemma 4's layer tail: post-norm, residual add, layer scale → one launch at the Mul.
    #[test]
    fn post_norm_add_and_scale_fold_into_one_launch() {
        let mut g = GraphBuilder::new();
        let res = input(&mut g, "res", DType::F32, &[64, 2]);
        let o = input(&mut g, "o", DType::F32, &[64, 2]);
        let w = weight(&mut g, "w", DType::F32, &[64]);
        let n = g.rms_norm(o, Some(w), 1e-6).unwrap();
        let sum = g.add(res, n).unwrap();
        // Created between the Add and the Mul, as the model graph does.
        let s = weight(&mut g, "s", DType::F32, &[1]);
        let out = g.mul(sum, s).unwrap();
        // The next layer's attention norm of the new residual stream.
        let next = g.rms_norm(out, Some(w), 1e-6).unwrap();
        let graph = g.finish(&[out, next]).unwrap();
        let p = plan(&graph, &HashSet::new(), &HashMap::new());
        assert_eq!(
            p.skip,
            HashSet::from([n.index(), sum.index(), next.index()]),
            "the norms and the add are skipped"
        );
        assert_eq!(
            p.fused.get(&out.index()),
            Some(&Fused::Tail(NormTail {
                norm: n,
                residual: res,
                scale: Some(s),
                planes: 1,
                next: Some(next),
            }))
        );
    }

    /// No fold where the norm or the sum has another reader, is an output, writes prepared
    /// activations, or the residual broadcasts; the Add alone folds when its sum is read twice.
    #[test]
    fn folds_only_private_adjacent_dense_nodes() {
        let mut g = GraphBuilder::new();
        let res = input(&mut g, "res", DType::F32, &[64, 2]);
        let bias = input(&mut g, "bias", DType::F32, &[64, 1]);
        let o = input(&mut g, "o", DType::F32, &[64, 2]);
        let s = weight(&mut g, "s", DType::F32, &[1]);
        // 1: the norm is read twice.
        let n1 = g.rms_norm(o, None, 1e-6).unwrap();
        let a1 = g.add(res, n1).unwrap();
        let twice = g.add(a1, n1).unwrap();
        // 2: a broadcast residual.
        let n2 = g.rms_norm(twice, None, 1e-6).unwrap();
        let a2 = g.add(n2, bias).unwrap();
        // 3: foldable norm + add, but the sum is read twice (the Mul is not folded).
        let n3 = g.rms_norm(a2, None, 1e-6).unwrap();
        let a3 = g.add(res, n3).unwrap();
        let m3 = g.mul(a3, s).unwrap();
        let both = g.add(m3, a3).unwrap();
        // 4: a norm kept for prepared activations.
        let n4 = g.rms_norm(both, None, 1e-6).unwrap();
        let a4 = g.add(res, n4).unwrap();
        let graph = g.finish(&[a4]).unwrap();
        let p = plan(&graph, &HashSet::from([n4.index()]), &HashMap::new());
        assert_eq!(p.skip, HashSet::from([n3.index()]));
        assert_eq!(
            p.fused.keys().copied().collect::<Vec<_>>(),
            vec![a3.index()],
            "only the third add launches a fused tail"
        );
        assert!(matches!(p.fused[&a3.index()], Fused::Tail(t) if t.scale.is_none()));
    }

    /// A head norm folds into the RoPE right after it, unless something else reads the norm.
    #[test]
    fn head_norm_folds_into_its_rope() {
        let mut g = GraphBuilder::new();
        let q = input(&mut g, "q", DType::F32, &[256, 4, 2]);
        let pos = input(&mut g, "pos", DType::I32, &[2]);
        let w = weight(&mut g, "w", DType::F32, &[256]);
        let params = graph::RopeParams {
            theta: 1e4,
            n_rot: 256,
        };
        let qn = g.rms_norm(q, Some(w), 1e-6).unwrap();
        let qr = g.rope(qn, pos, params, None).unwrap();
        let kn = g.rms_norm(q, Some(w), 1e-6).unwrap();
        let kr = g.rope(kn, pos, params, None).unwrap();
        let graph = g.finish(&[qr, kr, kn]).unwrap();
        let p = plan(&graph, &HashSet::new(), &HashMap::new());
        assert_eq!(p.skip, HashSet::from([qn.index()]));
        assert_eq!(
            p.fused.get(&qr.index()),
            Some(&Fused::Rope {
                norm: qn,
                write: None
            })
        );
        assert!(!p.fused.contains_key(&kr.index()), "kn is also an output");
    }

    /// A tail whose norm reads a split product run right before it sums the product's planes.
    #[test]
    fn a_tail_sums_the_split_planes_of_its_product() {
        let mut g = GraphBuilder::new();
        let res = input(&mut g, "res", DType::F32, &[64, 1]);
        let a = input(&mut g, "a", DType::F32, &[8192, 1]);
        let wo = weight(&mut g, "wo", DType::Q4_K, &[8192, 64]);
        let w = weight(&mut g, "w", DType::F32, &[64]);
        let o = g.matmul(wo, a).unwrap();
        let n = g.rms_norm(o, Some(w), 1e-6).unwrap();
        let sum = g.add(res, n).unwrap();
        let o2 = g.matmul(wo, a).unwrap();
        let n2 = g.rms_norm(o2, Some(w), 1e-6).unwrap();
        let sum2 = g.add(sum, n2).unwrap();
        let later = g.add(o2, res).unwrap(); // o2 is read twice: its planes are summed first
        let graph = g.finish(&[sum2, later]).unwrap();
        let splits = HashMap::from([(o.index(), 2), (o2.index(), 2)]);
        let p = plan(&graph, &HashSet::new(), &splits);
        assert_eq!(p.unsummed, HashSet::from([o.index()]));
        assert!(matches!(p.fused[&sum.index()], Fused::Tail(t) if t.planes == 2));
        assert!(matches!(p.fused[&sum2.index()], Fused::Tail(t) if t.planes == 1));
    }

    /// `Add(residual, product)` right after a split product read by nothing else: one launch
    /// sums the planes and adds; not where the product has another reader or is not adjacent.
    #[test]
    fn an_add_sums_the_split_planes_of_its_product() {
        let mut g = GraphBuilder::new();
        let h = input(&mut g, "h", DType::F32, &[64, 16]);
        let a = input(&mut g, "a", DType::F32, &[8192, 16]);
        let wo = weight(&mut g, "wo", DType::Q8_0, &[8192, 64]);
        let o = g.matmul_q8(wo, a).unwrap();
        let h1 = g.add(h, o).unwrap();
        // The product on the right or the left, the same fold.
        let o2 = g.matmul_q8(wo, a).unwrap();
        let h2 = g.add(o2, h1).unwrap();
        // Read twice: summed by the product.
        let o3 = g.matmul_q8(wo, a).unwrap();
        let h3 = g.add(h2, o3).unwrap();
        // Not adjacent: another launch between.
        let o4 = g.matmul_q8(wo, a).unwrap();
        let s = g.scale(h3, 2.0).unwrap();
        let h4 = g.add(s, o4).unwrap();
        // One plane: nothing to fold.
        let o5 = g.matmul_q8(wo, a).unwrap();
        let h5 = g.add(h4, o5).unwrap();
        let graph = g.finish(&[h5, o3]).unwrap();
        let splits = HashMap::from([
            (o.index(), 2),
            (o2.index(), 3),
            (o3.index(), 2),
            (o4.index(), 2),
        ]);
        let p = plan(&graph, &HashSet::new(), &splits);
        assert_eq!(p.unsummed, HashSet::from([o.index(), o2.index()]));
        assert_eq!(
            p.fused.get(&h1.index()),
            Some(&Fused::SumAdd {
                residual: h,
                planes: 2
            })
        );
        assert_eq!(
            p.fused.get(&h2.index()),
            Some(&Fused::SumAdd {
                residual: h1,
                planes: 3
            })
        );
        for n in [h3, h4, h5] {
            assert!(!p.fused.contains_key(&n.index()));
        }
        assert!(p.skip.is_empty());
    }

    const ROPE_256: graph::RopeParams = graph::RopeParams {
        theta: 1e4,
        n_rot: 256,
    };

    /// A layer's K and V head launches from `k_raw` ([256, 2, 1]): the k norm (weight `w`) and
    /// its RoPE written to an f16 K cache, the v norm (no weight) to an f32 V cache.
    struct KvHeads {
        kn: NodeId,
        k: NodeId,
        v: NodeId,
        vs: NodeId,
        kw: NodeId,
        vw: NodeId,
    }

    fn kv_heads(
        g: &mut GraphBuilder,
        k_raw: NodeId,
        pos: NodeId,
        slots: NodeId,
        w: NodeId,
    ) -> KvHeads {
        let kn = g.rms_norm(k_raw, Some(w), 1e-6).unwrap();
        let k = g.rope(kn, pos, ROPE_256, None).unwrap();
        let v = g.rms_norm(k_raw, None, 1e-6).unwrap();
        let ks = state(g, "k_cache", DType::F16, &[512, 8]);
        let vs = state(g, "v_cache", DType::F32, &[512, 8]);
        let k_rows = g.reshape(k, Shape::new(&[512, 1]).unwrap()).unwrap();
        let v_rows = g.reshape(v, Shape::new(&[512, 1]).unwrap()).unwrap();
        let kw = g.write_rows(ks, k_rows, slots).unwrap();
        let vw = g.write_rows(vs, v_rows, slots).unwrap();
        KvHeads {
            kn,
            k,
            v,
            vs,
            kw,
            vw,
        }
    }

    /// `WriteRows(cache, Reshape(RmsNorm(x)))` for x of [256, 2, t]: (the norm, the write).
    fn norm_into_cache(
        g: &mut GraphBuilder,
        x: NodeId,
        t: usize,
        cache: NodeId,
        slots: NodeId,
    ) -> (NodeId, NodeId) {
        let n = g.rms_norm(x, None, 1e-6).unwrap();
        let rows = g.reshape(n, Shape::new(&[512, t]).unwrap()).unwrap();
        (n, g.write_rows(cache, rows, slots).unwrap())
    }

    /// K (norm + RoPE) and V (norm) rows written to caches fold into their producers; a write
    /// with a reader of its state in between does not.
    #[test]
    fn cache_writes_fold_into_their_producers() {
        let mut g = GraphBuilder::new();
        let k_raw = input(&mut g, "k", DType::F32, &[256, 2, 1]);
        let pos = input(&mut g, "pos", DType::I32, &[1]);
        let slots = input(&mut g, "slots", DType::I32, &[1]);
        let w = weight(&mut g, "w", DType::F32, &[256]);
        let KvHeads {
            kn,
            k,
            v,
            vs,
            kw,
            vw,
        } = kv_heads(&mut g, k_raw, pos, slots, w);
        // A third norm whose write has a reader of the state before it.
        let u = g.rms_norm(k_raw, None, 1e-6).unwrap();
        let peek = g.add(vw, vw).unwrap();
        let u_rows = g.reshape(u, Shape::new(&[512, 1]).unwrap()).unwrap();
        let uw = g.write_rows(vs, u_rows, slots).unwrap();
        let graph = g.finish(&[kw, peek, uw]).unwrap();
        let p = plan(&graph, &HashSet::new(), &HashMap::new());
        assert_eq!(
            p.fused.get(&k.index()),
            Some(&Fused::Rope {
                norm: kn,
                write: Some(kw)
            })
        );
        assert_eq!(
            p.fused.get(&v.index()),
            Some(&Fused::NormWrite { write: vw })
        );
        assert!(
            !p.fused.contains_key(&u.index()),
            "the state is read in between"
        );
        // The k and v launches, back to back, also run as one.
        assert_eq!(
            p.skip,
            HashSet::from([kn.index(), kw.index(), vw.index(), v.index()])
        );
        assert_eq!(
            p.groups,
            HashMap::from([(k.index(), vec![k.index(), v.index()])])
        );
    }

    /// A layer's q norm + RoPE, k norm + RoPE + cache write and v norm + cache write, after their
    /// products, run as one launch at the q's; a head norm writing an output buffer (no cache)
    /// starts a group but never joins one, one reading a cache an earlier member writes does not
    /// join, nor one writing a cache an earlier member reads, and a prefill chunk's head norms are
    /// not grouped.
    #[test]
    fn a_layers_head_norms_run_as_one_launch() {
        let mut g = GraphBuilder::new();
        let q_raw = input(&mut g, "q", DType::F32, &[256, 4, 1]);
        let k_raw = input(&mut g, "k", DType::F32, &[256, 2, 1]);
        let pos = input(&mut g, "pos", DType::I32, &[1]);
        let slots = input(&mut g, "slots", DType::I32, &[1]);
        let w = weight(&mut g, "w", DType::F32, &[256]);
        let qn = g.rms_norm(q_raw, Some(w), 1e-6).unwrap();
        let q = g.rope(qn, pos, ROPE_256, None).unwrap();
        let KvHeads { k, v, kw, vw, .. } = kv_heads(&mut g, k_raw, pos, slots, w);
        // A second q-like norm (no cache write): its own launch.
        let q2n = g.rms_norm(q_raw, Some(w), 1e-6).unwrap();
        let q2 = g.rope(q2n, pos, ROPE_256, None).unwrap();
        let graph = g.finish(&[q, kw, vw, q2]).unwrap();
        let p = plan(&graph, &HashSet::new(), &HashMap::new());
        assert_eq!(
            p.groups,
            HashMap::from([(q.index(), vec![q.index(), k.index(), v.index()])])
        );
        assert!(p.skip.contains(&k.index()) && p.skip.contains(&v.index()));
        assert!(!p.skip.contains(&q.index()) && !p.skip.contains(&q2.index()));

        // Two norms into the K and V caches, the first reading `k_in` and the second `v_in` (each
        // the raw input or a view of a cache): grouped or not.
        let groups = |t: usize, k_from_v: bool, v_from_k: bool| {
            let mut g = GraphBuilder::new();
            let raw = input(&mut g, "k", DType::F32, &[256, 2, t]);
            let slots = input(&mut g, "slots", DType::I32, &[t]);
            let ks = state(&mut g, "k_cache", DType::F32, &[512, 64]);
            let vs = state(&mut g, "v_cache", DType::F32, &[512, 64]);
            let head_rows = |g: &mut GraphBuilder, cache| {
                g.view(
                    cache,
                    Shape::new(&[256, 2, 1]).unwrap(),
                    [1, 256, 512, 512],
                    0,
                )
                .unwrap()
            };
            let k_in = if k_from_v { head_rows(&mut g, vs) } else { raw };
            let (kn, kw) = norm_into_cache(&mut g, k_in, t, ks, slots);
            let v_in = if v_from_k { head_rows(&mut g, ks) } else { raw };
            let (vn, vw) = norm_into_cache(&mut g, v_in, t, vs, slots);
            let graph = g.finish(&[kw, vw]).unwrap();
            let p = plan(&graph, &HashSet::new(), &HashMap::new());
            assert!(p.fused.contains_key(&kn.index()) && p.fused.contains_key(&vn.index()));
            !p.groups.is_empty()
        };
        assert!(groups(1, false, false), "two independent cache norms");
        assert!(
            !groups(1, false, true),
            "the v norm reads the k launch's cache"
        );
        assert!(
            !groups(1, true, false),
            "the v launch writes the cache the k launch reads"
        );
        let t = crate::source::RN_JOBS_MAX_TOKENS + 1;
        assert!(!groups(t, false, false), "{t} tokens: a launch each");
    }

    /// A norm that is both the next norm of one tail and the norm of the following tail (the MoE
    /// FFN's shape) is done once, by the second.
    #[test]
    fn a_norm_is_done_once_when_two_tails_could_take_it() {
        let mut g = GraphBuilder::new();
        let r1 = input(&mut g, "r1", DType::F32, &[64, 1]);
        let r2 = input(&mut g, "r2", DType::F32, &[64, 1]);
        let x = input(&mut g, "x", DType::F32, &[64, 1]);
        let na = g.rms_norm(x, None, 1e-6).unwrap();
        let t1 = g.add(r1, na).unwrap();
        let nb = g.rms_norm(t1, None, 1e-6).unwrap();
        let t2 = g.add(r2, nb).unwrap();
        let graph = g.finish(&[t2]).unwrap();
        let p = plan(&graph, &HashSet::new(), &HashMap::new());
        assert_eq!(p.skip, HashSet::from([na.index(), nb.index()]));
        assert!(matches!(p.fused[&t1.index()], Fused::Tail(t) if t.norm == na && t.next.is_none()));
        assert!(matches!(p.fused[&t2.index()], Fused::Tail(t) if t.norm == nb && t.next.is_none()));
    }
}
