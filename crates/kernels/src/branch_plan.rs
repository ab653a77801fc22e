//! Branches of a decode step or verify batch that run on a second CUDA stream while the main
//! stream runs on.
//!
//! A Gemma 4 MoE layer's FFN has two branches that meet only at their sum: the dense MLP
//! (its norm, gate and up, GLU, down and post-norm) and the routed experts (the router's norm,
//! product and routing, the expert norm, the expert products, GLU and their weighted sum). On
//! one stream their ~15 short launches run one after another; here the experts' launches go on
//! a side stream that forks from the main one once their input exists and joins it before the
//! first launch that reads them, so the two chains overlap (in a captured graph, the fork and
//! join are edges).
//!
//! A pure function of the graph and its other plans, so it is tested without a GPU. A side
//! branch is the largest set of nodes that feed a `MoeSum` (itself included) and nothing
//! outside the set. It is taken only where that is safe with what the backend shares between
//! launches:
//! - the side's launches use no shared scratch (prepared activations, split partials, the GEMM
//!   route, attention or argmax scratch) and write no storage but their own;
//! - every fused launch folds nodes of one side only;
//! - the main launches that run beside the side write no storage but their own;
//! - the memory plan keeps every value of the region in its slot until the join
//!   ([`BranchPlan::holds`]), since its nodes no longer run in graph order.

use std::collections::HashSet;

use graph::{Graph, Hold, Op};

use crate::fuse_plan::{FusePlan, Fused};
use crate::mma_plan::MmaPlan;

/// One side branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Branch {
    /// The side forks before the main stream runs this node: every value it reads from outside
    /// is computed by a launch of an earlier node.
    pub fork_at: usize,
    /// The side's nodes in graph order (its launches and the nodes they fold or view).
    pub side: Vec<usize>,
    /// The first main-stream launch that reads a side value: the main stream waits for the
    /// side before it.
    pub join_at: usize,
    /// The last node of the region (the join, or a later side node).
    pub end: usize,
}

/// The side branches of one loaded graph (node indices), in graph order, none overlapping.
#[derive(Debug, Default)]
pub(crate) struct BranchPlan {
    /// The branches.
    pub branches: Vec<Branch>,
    /// Every side node of every branch.
    pub side: HashSet<usize>,
    /// The memory plan's holds, one a branch: every node of its region (and what the region's
    /// launches fold) keeps what it reads and writes until the region's end.
    pub holds: Vec<Hold>,
}

/// The side branches the CUDA backend would run on a second stream in `graph` with its default
/// settings (mma products on, the GEMM route available); a pure function, for CI checks of a
/// model's graph.
pub fn planned_branches(graph: &Graph) -> usize {
    let (mma, fuse) = crate::fuse_plan::default_plans(graph);
    plan(graph, &mma, &fuse).branches.len()
}

/// Most tokens of a graph whose branches run on the side stream: decode steps, drafts and
/// verify batches (up to 16 tokens), whose launches are short enough for the overlap to matter.
/// Prefill chunks keep one stream.
pub(crate) const MAX_TOKENS: usize = 16;

/// Whether `graph` takes at most [`MAX_TOKENS`] tokens: every product has at most that many
/// activation rows, and every expert-indexed product at most that many tokens (its rows are a
/// token's slots).
fn few_tokens(graph: &Graph) -> bool {
    graph.nodes().iter().all(|node| match node.op {
        Op::MatMul | Op::MatMulQ8 => node.shape().n_rows() <= MAX_TOKENS,
        Op::MatMulId => graph.node(node.inputs[2]).shape().ne(1) <= MAX_TOKENS,
        _ => true,
    })
}

/// Plans the side branches of `graph`, whose products and fusions are planned by `mma` and
/// `fuse`: none unless it takes at most [`MAX_TOKENS`] tokens.
pub(crate) fn plan(graph: &Graph, mma: &MmaPlan, fuse: &FusePlan) -> BranchPlan {
    let mut p = BranchPlan::default();
    if !few_tokens(graph) {
        return p;
    }
    let Some(launcher) = fuse.launchers(graph) else {
        return p;
    };
    let nodes = graph.nodes();
    let n = nodes.len();
    let leaf = |k: usize| matches!(nodes[k].op, Op::Input | Op::Weight | Op::State);
    let viewing = |k: usize| matches!(nodes[k].op, Op::View | Op::Reshape | Op::Permute(_));
    let launches = |k: usize| !leaf(k) && !viewing(k) && !fuse.skip.contains(&k);
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in nodes.iter().enumerate() {
        for x in &node.inputs {
            consumers[x.index()].push(i);
        }
    }
    let outputs: HashSet<usize> = graph.outputs().iter().map(|o| o.index()).collect();
    // The launch after which each node's value exists (None for leaves); a view's is its input's.
    let mut ready: Vec<Option<usize>> = vec![None; n];
    for i in 0..n {
        ready[i] = if leaf(i) {
            None
        } else if viewing(i) {
            nodes[i]
                .inputs
                .iter()
                .filter_map(|x| ready[x.index()])
                .max()
        } else {
            Some(launcher[i])
        };
    }
    // Whether a launch keyed at `k` uses something every launch shares (see the module docs).
    let shares_scratch = |k: usize| {
        mma.products.contains_key(&k)
            || mma.q8.contains_key(&k)
            || mma.gemm.contains_key(&k)
            || mma.norms.contains(&k)
            || fuse.unsummed.contains(&k)
            || matches!(nodes[k].op, Op::Attention(_) | Op::Argmax)
            || match fuse.fused.get(&k) {
                Some(Fused::SumAdd { .. }) => true,
                Some(Fused::Tail(t)) => {
                    t.planes > 1 || t.next.is_some_and(|n2| mma.norms.contains(&n2.index()))
                }
                _ => false,
            }
    };
    // The launches that write storage of another node (an in-place write, a cache row), by
    // their own node or one they fold (a norm's cache write).
    let mut writes_elsewhere = vec![false; n];
    for i in (0..n).filter(|&i| !leaf(i) && !viewing(i) && nodes[i].root.index() != i) {
        writes_elsewhere[launcher[i]] = true;
    }
    let mut taken_until = 0;
    for ms in (0..n).filter(|&i| matches!(nodes[i].op, Op::MoeSum)) {
        // Ancestors of the MoeSum, then the largest set of them read only inside the set.
        let mut ancestor = vec![false; n];
        ancestor[ms] = true;
        let mut in_side = vec![false; n];
        in_side[ms] = !outputs.contains(&ms);
        for i in (0..ms).rev() {
            ancestor[i] = consumers[i].iter().any(|&c| c <= ms && ancestor[c]);
            in_side[i] = ancestor[i]
                && !leaf(i)
                && !outputs.contains(&i)
                && consumers[i].iter().all(|&c| in_side[c]);
        }
        let side: Vec<usize> = (0..=ms).filter(|&i| in_side[i]).collect();
        let Some(&first) = side.first() else { continue };
        // Every fused launch is all side or all main.
        if (0..n).any(|i| in_side[i] != in_side[launcher[i]]) {
            continue;
        }
        let side_launches: Vec<usize> = side.iter().copied().filter(|&k| launches(k)).collect();
        if side_launches.len() < 2
            || side_launches
                .iter()
                .any(|&k| shares_scratch(k) || writes_elsewhere[k])
        {
            continue;
        }
        // Fork once every outside value the side reads exists.
        let fork_at = side
            .iter()
            .flat_map(|&i| nodes[i].inputs.iter().map(|x| x.index()))
            .filter(|&x| !in_side[x])
            .filter_map(|x| ready[x])
            .max()
            .map_or(0, |r| r + 1);
        // Join before the first main launch that reads a side value.
        let join_at = (0..n)
            .filter(|&c| !in_side[c] && nodes[c].inputs.iter().any(|x| in_side[x.index()]))
            .map(|c| launcher[c])
            .min();
        let Some(join_at) = join_at else { continue };
        let end = join_at.max(ms);
        let beside: Vec<usize> = (fork_at..join_at)
            .filter(|&k| !in_side[k] && launches(k))
            .collect();
        let fits = fork_at >= taken_until
            && fork_at <= first
            && join_at > fork_at
            && !beside.is_empty()
            && beside.iter().all(|&k| !writes_elsewhere[k]);
        if !fits {
            continue;
        }
        taken_until = end + 1;
        p.holds.push(Hold {
            nodes: (0..n)
                .filter(|&i| (fork_at..=end).contains(&i) || (fork_at..=end).contains(&launcher[i]))
                .collect(),
            until: end,
        });
        p.side.extend(side.iter().copied());
        p.branches.push(Branch {
            fork_at,
            side,
            join_at,
            end,
        });
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use graph::{DType, GluOp, GraphBuilder, NodeId, Shape};

    /// A MoE FFN of the Gemma 4 shape (f32 weights, one token): the dense MLP and the routed
    /// experts from one residual, summed. Returns the graph, the residual and the MoeSum.
    fn moe_ffn(dense_reads_router: bool, t: usize) -> (Graph, NodeId, NodeId) {
        let (h, f, e, k, i) = (64, 96, 4, 2, 32);
        let mut g = GraphBuilder::new();
        let s = |d: &[usize]| Shape::new(d).unwrap();
        let x = g.input("x", DType::F32, s(&[h, t])).unwrap();
        let nw = g.weight("norm", DType::F32, s(&[h])).unwrap();
        let r = g.rms_norm(x, Some(nw), 1e-6).unwrap();
        let r = g.add(x, r).unwrap();
        // Dense branch.
        let fw = g.weight("ffn_norm", DType::F32, s(&[h])).unwrap();
        let m_in = g.rms_norm(r, Some(fw), 1e-6).unwrap();
        let gw = g.weight("gate", DType::F32, s(&[h, f])).unwrap();
        let uw = g.weight("up", DType::F32, s(&[h, f])).unwrap();
        let dw = g.weight("down", DType::F32, s(&[f, h])).unwrap();
        let gate = g.matmul(gw, m_in).unwrap();
        let up = g.matmul(uw, m_in).unwrap();
        let act = g.glu(GluOp::GeGlu, gate, up).unwrap();
        let mut m = g.matmul(dw, act).unwrap();
        let p1 = g.weight("post1", DType::F32, s(&[h])).unwrap();
        m = g.rms_norm(m, Some(p1), 1e-6).unwrap();
        // Experts.
        let rs = g.weight("router_scale", DType::F32, s(&[h])).unwrap();
        let rn = g.rms_norm(r, Some(rs), 1e-6).unwrap();
        let rn = g.scale(rn, 0.125).unwrap();
        let router = g.weight("router", DType::F32, s(&[h, e])).unwrap();
        let logits = g.matmul(router, rn).unwrap();
        let probs = g.softmax(logits).unwrap();
        let ids = g.top_k(probs, k).unwrap();
        let weights = g.moe_weights(probs, ids, None, true).unwrap();
        let xw = g.weight("pre2", DType::F32, s(&[h])).unwrap();
        let xin = g.rms_norm(r, Some(xw), 1e-6).unwrap();
        let xin = g.reshape(xin, s(&[h, 1, t])).unwrap();
        let gu = g.weight("gate_exps", DType::F32, s(&[h, i, e])).unwrap();
        let uu = g.weight("up_exps", DType::F32, s(&[h, i, e])).unwrap();
        let du = g.weight("down_exps", DType::F32, s(&[i, h, e])).unwrap();
        let eg = g.matmul_id(gu, xin, ids).unwrap();
        let eu = g.matmul_id(uu, xin, ids).unwrap();
        let ea = g.glu(GluOp::GeGlu, eg, eu).unwrap();
        let eo = g.matmul_id(du, ea, ids).unwrap();
        let ms = g.moe_sum(eo, weights).unwrap();
        if dense_reads_router {
            // The dense branch reads a routing value: the experts are no longer a branch of
            // their own from the router on.
            let w0 = g.view(weights, s(&[1, 1]), [1, 1, 1, 1], 0).unwrap();
            m = g.mul(m, w0).unwrap();
        }
        let p2 = g.weight("post2", DType::F32, s(&[h])).unwrap();
        let en = g.rms_norm(ms, Some(p2), 1e-6).unwrap();
        let sum = g.add(m, en).unwrap();
        let out = g.add(r, sum).unwrap();
        (g.finish(&[out]).unwrap(), r, ms)
    }

    #[test]
    fn the_experts_of_a_moe_ffn_fork_after_the_residual_and_join_at_the_sum() {
        let (graph, r, ms) = moe_ffn(false, 1);
        let (mma, fuse) = crate::fuse_plan::default_plans(&graph);
        let p = plan(&graph, &mma, &fuse);
        assert_eq!(p.branches.len(), 1, "{p:?}");
        let b = &p.branches[0];
        let nodes = graph.nodes();
        // The side: the router chain, the expert norm and products, their GLU and sum, and
        // nothing of the dense branch.
        let ops: Vec<&str> = b.side.iter().map(|&i| nodes[i].op.name()).collect();
        assert_eq!(*b.side.last().unwrap(), ms.index());
        for op in ["softmax", "top_k", "moe_weights", "matmul_id", "moe_sum"] {
            assert!(ops.contains(&op), "{op} not on the side: {ops:?}");
        }
        assert!(b.side.iter().all(|&i| nodes[i].op.name() != "matmul"
            || graph.node(nodes[i].inputs[0]).name.as_deref() == Some("router")));
        // It forks right after the residual's launch, before the dense branch's first.
        let launcher = fuse.launchers(&graph).unwrap();
        assert_eq!(b.fork_at, launcher[r.index()] + 1);
        let dense_gate = nodes
            .iter()
            .position(|n| {
                matches!(n.op, Op::MatMul)
                    && graph.node(n.inputs[0]).name.as_deref() == Some("gate")
            })
            .unwrap();
        assert!(b.fork_at <= dense_gate && dense_gate < b.join_at);
        // It joins at the launch that reads the experts' sum (the post-norm's fused tail).
        let readers: Vec<usize> = (0..nodes.len())
            .filter(|&c| nodes[c].inputs.contains(&ms))
            .map(|c| launcher[c])
            .collect();
        assert_eq!(b.join_at, *readers.iter().min().unwrap());
        // The memory plan holds the region's values until its end.
        let holds = &p.holds;
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].until, b.end);
        assert!(holds[0].nodes.contains(&dense_gate) && holds[0].nodes.contains(&ms.index()));
    }

    /// Verify batches up to 16 tokens fork (their expert products have more rows: a token's
    /// slots each); prefill chunks of more keep one stream.
    #[test]
    fn batches_up_to_16_tokens_fork_and_longer_ones_do_not() {
        for (t, forks) in [(2, 1), (16, 1), (17, 0)] {
            let (graph, _, _) = moe_ffn(false, t);
            let (mma, fuse) = crate::fuse_plan::default_plans(&graph);
            assert_eq!(
                plan(&graph, &mma, &fuse).branches.len(),
                forks,
                "{t} tokens"
            );
        }
    }

    #[test]
    fn a_side_value_read_by_the_dense_branch_keeps_it_out_of_the_side() {
        let (graph, _, _) = moe_ffn(true, 1);
        let (mma, fuse) = crate::fuse_plan::default_plans(&graph);
        let p = plan(&graph, &mma, &fuse);
        // The expert products and their sum still fork, after the routing.
        assert_eq!(p.branches.len(), 1, "{p:?}");
        let nodes = graph.nodes();
        // The routing weights (read by the dense branch) and what feeds them stay on the
        // main stream; whatever forks reads them from there.
        for b in &p.branches {
            for &i in &b.side {
                assert!(
                    !matches!(
                        nodes[i].op,
                        Op::MoeWeights { .. } | Op::Softmax | Op::TopK(_)
                    ),
                    "{} on the side",
                    nodes[i].op.name()
                );
            }
        }
    }
}
