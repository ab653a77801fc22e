//! The one-step graph of the assistant.

use std::collections::HashMap;

use graph::{
    AttnMask, AttnParams, Bindings, DType, GluOp, Graph, GraphBuilder, KvLayout, NodeId,
    RopeParams, Shape,
};
use target::Target;

use crate::config::AssistantConfig;
use crate::Tensor;

/// Every assistant tensor with its shape (ggml order). `layer_output_scale` and `rope_freqs`
/// may be absent.
pub fn expected_tensors(c: &AssistantConfig) -> Vec<(String, Vec<usize>)> {
    let (h, hb) = (c.n_embd, c.n_backbone);
    let mut out = vec![
        ("token_embd.weight".to_string(), vec![h, c.n_vocab]),
        ("output_norm.weight".to_string(), vec![h]),
        (c.layout.projection("pre_projection"), vec![2 * hb, h]),
        (c.layout.projection("post_projection"), vec![h, hb]),
        ("rope_freqs.weight".to_string(), vec![c.n_rot_full / 2]),
    ];
    for l in 0..c.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        let q = c.n_head * c.head_dim(l);
        let ff = c.n_ff[l];
        out.extend([
            (b("attn_norm.weight"), vec![h]),
            (b("attn_q.weight"), vec![h, q]),
            (b("attn_q_norm.weight"), vec![c.head_dim(l)]),
            (b("attn_output.weight"), vec![q, h]),
            (b("post_attention_norm.weight"), vec![h]),
            (b("ffn_norm.weight"), vec![h]),
            (b("ffn_gate.weight"), vec![h, ff]),
            (b("ffn_up.weight"), vec![h, ff]),
            (b("ffn_down.weight"), vec![ff, h]),
            (b("post_ffw_norm.weight"), vec![h]),
            (b("layer_output_scale.weight"), vec![1]),
        ]);
    }
    if let Some(head) = &c.centroids {
        out.push((head.centroids.clone(), vec![h, head.n_centroids]));
    }
    out
}

/// The step graph with its input and output nodes.
#[derive(Debug)]
pub struct StepGraph {
    /// The graph.
    pub graph: Graph,
    /// Weight and donor-cache bindings.
    pub bindings: Bindings,
    /// Token id, I32 `[1]`.
    pub token: NodeId,
    /// Previous hidden state, F32 `[n_backbone]`.
    pub h_prev: NodeId,
    /// Position of the query (constant within a round), I32 `[1]`.
    pub position: NodeId,
    /// Committed positions the donors hold, I32 `[1]`.
    pub n_kv: NodeId,
    /// Assistant logits `[n_vocab, 1]`.
    pub logits: NodeId,
    /// Next hidden state `[n_backbone, 1]`.
    pub h_next: NodeId,
    /// Argmax of the logits, I32 `[1]`.
    pub argmax: NodeId,
    /// Centroid scores `[n_centroids, 1]`, for assistants with a centroid head.
    pub centroid_scores: Option<NodeId>,
}

/// Builds the assistant's one-step graph over `target`'s embedding and donor caches.
pub fn build_step_graph(
    c: &AssistantConfig,
    donors: &[usize],
    tensors: &HashMap<String, Tensor>,
    target: &Target,
) -> target::Result<StepGraph> {
    let mut g = GraphBuilder::new();
    let mut bindings = Bindings::new();
    let mut leaves: HashMap<String, NodeId> = HashMap::new();
    let mut w = |g: &mut GraphBuilder,
                 bindings: &mut Bindings,
                 name: &str|
     -> target::Result<Option<NodeId>> {
        if let Some(&id) = leaves.get(name) {
            return Ok(Some(id));
        }
        let Some(t) = tensors.get(name) else {
            return Ok(None);
        };
        let id = g.weight(name, t.dtype, t.shape)?;
        bindings.bind(id, t.buffer);
        leaves.insert(name.to_string(), id);
        Ok(Some(id))
    };
    let req = |x: Option<NodeId>, name: &str| {
        x.ok_or_else(|| target::Error::Input(format!("assistant tensor '{name}' was not loaded")))
    };
    let tc = target.config();
    let hb = c.n_backbone;
    let token = g.input("token", DType::I32, Shape::new(&[1])?)?;
    let h_prev = g.input("h_prev", DType::F32, Shape::new(&[hb])?)?;
    let position = g.input("position", DType::I32, Shape::new(&[1])?)?;
    let n_kv = g.input("n_kv", DType::I32, Shape::new(&[1])?)?;

    // The target's token embedding, scaled by √H_backbone, then [embedding; h_prev].
    let te = target
        .weight("token_embd.weight")
        .ok_or_else(|| target::Error::Input("the target has no token_embd.weight".into()))?;
    let temb = g.weight("target.token_embd.weight", te.dtype, te.shape)?;
    bindings.bind(temb, te.buffer);
    let e = g.get_rows(temb, token)?;
    let e = g.scale(e, (hb as f32).sqrt())?;
    let hp = g.reshape(h_prev, Shape::new(&[hb, 1])?)?;
    let xh = g.concat(e, hp, 0)?;
    let pre = c.layout.projection("pre_projection");
    let pre_w = req(w(&mut g, &mut bindings, &pre)?, &pre)?;
    let mut x = g.matmul(pre_w, xh)?;

    let rope_freqs = w(&mut g, &mut bindings, "rope_freqs.weight")?;
    let cache = target.cache();
    for (l, &donor) in donors.iter().enumerate() {
        let name = |s: &str| format!("blk.{l}.{s}");
        let mut wt = |s: &str| -> target::Result<NodeId> {
            let n = name(s);
            req(w(&mut g, &mut bindings, &n)?, &n)
        };
        let attn_norm = wt("attn_norm.weight")?;
        let attn_q = wt("attn_q.weight")?;
        let q_norm = wt("attn_q_norm.weight")?;
        let attn_out = wt("attn_output.weight")?;
        let post_attn = wt("post_attention_norm.weight")?;
        let ffn_norm = wt("ffn_norm.weight")?;
        let gate = wt("ffn_gate.weight")?;
        let up = wt("ffn_up.weight")?;
        let down = wt("ffn_down.weight")?;
        let post_ffw = wt("post_ffw_norm.weight")?;
        let scale = w(&mut g, &mut bindings, &name("layer_output_scale.weight"))?;

        let sliding = c.is_sliding[l];
        let hd = c.head_dim(l);
        let rope = if sliding {
            RopeParams {
                theta: c.rope_theta_swa,
                n_rot: c.n_rot_swa,
            }
        } else {
            RopeParams {
                theta: c.rope_theta_full,
                n_rot: c.n_rot_full,
            }
        };
        let residual = x;
        let hn = g.rms_norm(x, Some(attn_norm), c.eps)?;
        let q = g.matmul(attn_q, hn)?;
        let q = g.reshape(q, Shape::new(&[hd, c.n_head, 1])?)?;
        let q = g.rms_norm(q, Some(q_norm), c.eps)?;
        let q = g.rope(q, position, rope, if sliding { None } else { rope_freqs })?;

        let kv = cache.layer(donor).ok_or_else(|| {
            target::Error::Input(format!("donor target layer {donor} has no cache"))
        })?;
        let n_kv_heads = tc.n_head_kv[donor];
        let row_shape = Shape::new(&[hd * n_kv_heads, kv.rows])?;
        let k_state = g.state(&format!("donor.{donor}.k"), cache.dtype(), row_shape)?;
        let v_state = g.state(&format!("donor.{donor}.v"), cache.dtype(), row_shape)?;
        bindings.bind(k_state, kv.k);
        bindings.bind(v_state, kv.v);
        let k = g.reshape(k_state, Shape::new(&[hd, n_kv_heads, kv.rows])?)?;
        let v = g.reshape(v_state, Shape::new(&[hd, n_kv_heads, kv.rows])?)?;
        // The query sits at the first uncommitted position and sees committed positions only:
        // full donors all of them, sliding donors the last window + 1 (transformers' mask for
        // the single assistant query); a window of W + 2 counted back from the query gives that.
        let params = if sliding {
            AttnParams {
                scale: 1.0,
                mask: AttnMask::SlidingWindow {
                    window: tc.sliding_window + 2,
                },
                kv_layout: KvLayout::Ring,
            }
        } else {
            AttnParams {
                scale: 1.0,
                mask: AttnMask::Causal,
                kv_layout: KvLayout::Linear,
            }
        };
        let a = g.attention(q, k, v, position, n_kv, None, params)?;
        let a = g.reshape(a, Shape::new(&[hd * c.n_head, 1])?)?;
        let o = g.matmul(attn_out, a)?;
        let o = g.rms_norm(o, Some(post_attn), c.eps)?;
        x = g.add(residual, o)?;
        let residual = x;
        let m_in = g.rms_norm(x, Some(ffn_norm), c.eps)?;
        let gt = g.matmul(gate, m_in)?;
        let u = g.matmul(up, m_in)?;
        let act = g.glu(GluOp::GeGlu, gt, u)?;
        let m = g.matmul(down, act)?;
        let m = g.rms_norm(m, Some(post_ffw), c.eps)?;
        x = g.add(residual, m)?;
        if let Some(s) = scale {
            x = g.mul(x, s)?;
        }
    }
    let out_norm = req(
        w(&mut g, &mut bindings, "output_norm.weight")?,
        "output_norm.weight",
    )?;
    let hn = g.rms_norm(x, Some(out_norm), c.eps)?;
    let head = req(
        w(&mut g, &mut bindings, "token_embd.weight")?,
        "token_embd.weight",
    )?;
    let logits = g.matmul(head, hn)?;
    let logits = match c.final_logit_softcap {
        Some(cap) => g.softcap(logits, cap)?,
        None => logits,
    };
    let post = c.layout.projection("post_projection");
    let post_w = req(w(&mut g, &mut bindings, &post)?, &post)?;
    let h_next = g.matmul(post_w, hn)?;
    let argmax = g.argmax(logits)?;
    let centroid_scores = match &c.centroids {
        Some(head) => {
            let cw = req(w(&mut g, &mut bindings, &head.centroids)?, &head.centroids)?;
            Some(g.matmul(cw, hn)?)
        }
        None => None,
    };
    let mut outputs = vec![logits, h_next, argmax];
    outputs.extend(centroid_scores);
    let graph = g.finish(&outputs)?;
    Ok(StepGraph {
        graph,
        bindings,
        token,
        h_prev,
        position,
        n_kv,
        logits,
        h_next,
        argmax,
        centroid_scores,
    })
}
