//! The Gemma 4 forward pass as one graph for any batch of tokens at any positions: prefill
//! chunks, single-token decode and speculative verify batches are the same code.
//!
//! Per layer (see `gemma4-model.md` §A.2): RMSNorm → Q (q-norm, RoPE) and, on K/V-owning layers,
//! K (k-norm, RoPE) and V (raw K projection on K=V layers, weightless norm) written into the
//! cache → attention (scale 1, causal or sliding window) → o-proj → post-norm + residual →
//! GeGLU MLP (plus routed experts on MoE layers) → post-norm + residual → per-layer embedding
//! (E-style models) → layer scalar. Then the final norm, the tied (or separate) head and the
//! logit soft-cap. Norms multiply by `w`, not `1 + w`.

use std::collections::HashMap;

use graph::{
    AttnMask, AttnParams, Bindings, DType, GluOp, Graph, GraphBuilder, KvLayout, NodeId,
    RopeParams, Shape,
};

use crate::config::Gemma4Config;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::weights::Weights;

/// Which rows get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogitRows {
    /// Every token's row (verify batches, reference checks).
    All,
    /// The last token's row only (prefill, decode).
    Last,
    /// No logits (prefill chunks before the last).
    None,
}

/// What one step computes besides the K/V writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StepSpec {
    /// Tokens in the batch.
    pub n_tokens: usize,
    /// Which rows get logits.
    pub logits: LogitRows,
    /// Layers whose outputs (after the layer scalar) are returned, for drafters and tests; the
    /// last layer's is taken after the final norm, as transformers' `hidden_states` has it.
    pub capture_layers: Vec<usize>,
    /// Whether to return the scaled embeddings (the input of layer 0).
    pub capture_embedding: bool,
    /// Whether to compute the argmax of each logit row on the device.
    pub argmax: bool,
}

/// A built step graph with the ids of its inputs and outputs.
#[derive(Debug)]
pub struct StepGraph {
    /// The graph.
    pub graph: Graph,
    /// Weight and cache bindings.
    pub bindings: Bindings,
    /// Token ids, I32 `[t]`.
    pub tokens: NodeId,
    /// Absolute positions, I32 `[t]`.
    pub positions: NodeId,
    /// Ring rows of sliding-layer writes, I32 `[t]`.
    pub slots_swa: NodeId,
    /// Rows of full-layer writes, I32 `[t]`.
    pub slots_full: NodeId,
    /// Positions valid after the write (`n_past + t`), I32 `[1]`.
    pub n_kv: NodeId,
    /// Soft-capped logits `[n_vocab, rows]`.
    pub logits: Option<NodeId>,
    /// Final post-norm hidden `[n_embd, t]`.
    pub hidden: NodeId,
    /// Input of the final norm `[n_embd, t]`.
    pub hidden_prenorm: NodeId,
    /// Captured layer outputs.
    pub layers: Vec<(usize, NodeId)>,
    /// Scaled embeddings, if captured.
    pub embedding: Option<NodeId>,
    /// Argmax token of each logit row, I32, if asked for.
    pub argmax: Option<NodeId>,
}

struct Ctx<'a> {
    g: GraphBuilder,
    cfg: &'a Gemma4Config,
    weights: &'a Weights,
    bindings: Bindings,
    leaves: HashMap<String, NodeId>,
}

impl Ctx<'_> {
    /// The weight leaf `name` (created and bound on first use), or `None` if the file lacks it.
    fn w_opt(&mut self, name: &str) -> Result<Option<NodeId>> {
        if let Some(&id) = self.leaves.get(name) {
            return Ok(Some(id));
        }
        let Some(w) = self.weights.get(name) else {
            return Ok(None);
        };
        let id = self.g.weight(name, w.dtype, w.shape)?;
        self.bindings.bind(id, w.buffer);
        self.leaves.insert(name.to_string(), id);
        Ok(Some(id))
    }

    /// The weight leaf `name`; loading checked required tensors, so absence is a bug in the
    /// caller's choice of name, reported as an error all the same.
    fn w(&mut self, name: &str) -> Result<NodeId> {
        self.w_opt(name)?
            .ok_or_else(|| Error::Input(format!("tensor '{name}' was not loaded")))
    }

    fn norm(&mut self, x: NodeId, weight: &str) -> Result<NodeId> {
        let w = self.w(weight)?;
        Ok(self.g.rms_norm(x, Some(w), self.cfg.eps)?)
    }

    fn reshape(&mut self, x: NodeId, dims: &[usize]) -> Result<NodeId> {
        Ok(self.g.reshape(x, Shape::new(dims)?)?)
    }

    fn geglu_mlp(&mut self, x: NodeId, l: usize) -> Result<NodeId> {
        let gate_w = self.w(&format!("blk.{l}.ffn_gate.weight"))?;
        let up_w = self.w(&format!("blk.{l}.ffn_up.weight"))?;
        let down_w = self.w(&format!("blk.{l}.ffn_down.weight"))?;
        let gate = self.g.matmul(gate_w, x)?;
        let up = self.g.matmul(up_w, x)?;
        let act = self.g.glu(GluOp::GeGlu, gate, up)?;
        Ok(self.g.matmul(down_w, act)?)
    }

    /// Routed experts of an MoE layer; `r` is the post-attention residual `[H, t]`.
    fn experts(&mut self, r: NodeId, l: usize, t: usize) -> Result<NodeId> {
        let moe = self
            .cfg
            .moe
            .clone()
            .expect("experts() is only called for MoE configs");
        let (h, k, i) = (self.cfg.n_embd, moe.n_expert_used, moe.n_ff_expert);
        let b = |s: &str| format!("blk.{l}.{s}");
        // Router: RMS_noscale(r) · router.scale · H^-½ → softmax → top-k → renormalise → per-expert scale.
        // The router scale as the norm's weight: the norm rounds v·inv then ·w, as a Mul after
        // it did, in one launch fewer.
        let rs = self.w(&b("ffn_gate_inp.scale"))?;
        let rn = self.g.rms_norm(r, Some(rs), self.cfg.eps)?;
        let rn = self.g.scale(rn, 1.0 / (h as f32).sqrt())?;
        let router = self.w(&b("ffn_gate_inp.weight"))?;
        let logits = self.g.matmul(router, rn)?;
        let probs = self.g.softmax(logits)?;
        let ids = self.g.top_k(probs, k)?;
        let expert_scale = self.w(&b("ffn_down_exps.scale"))?;
        let weights = self.g.moe_weights(probs, ids, Some(expert_scale), true)?;

        let xin = self.norm(r, &b("pre_ffw_norm_2.weight"))?;
        let xin = self.reshape(xin, &[h, 1, t])?;
        let act = if let Some(gate_up) = self.w_opt(&b("ffn_gate_up_exps.weight"))? {
            let gu = self.g.matmul_id(gate_up, xin, ids)?; // [2i, k, t]
            let strides = [1, 2 * i, 2 * i * k, 2 * i * k * t];
            let shape = Shape::new(&[i, k, t])?;
            let gate = self.g.view(gu, shape, strides, 0)?;
            let up = self.g.view(gu, shape, strides, i)?;
            self.g.glu(GluOp::GeGlu, gate, up)?
        } else {
            let gate_w = self.w(&b("ffn_gate_exps.weight"))?;
            let up_w = self.w(&b("ffn_up_exps.weight"))?;
            let gate = self.g.matmul_id(gate_w, xin, ids)?;
            let up = self.g.matmul_id(up_w, xin, ids)?;
            self.g.glu(GluOp::GeGlu, gate, up)?
        };
        let down = self.w(&b("ffn_down_exps.weight"))?;
        let out = self.g.matmul_id(down, act, ids)?; // [h, k, t]
                                                     // Σ_j out[·, j, t]·weights[j, t], multiplied then added in slot order.
        Ok(self.g.moe_sum(out, weights)?)
    }
}

/// Builds the step graph for `spec` against the uploaded `weights` and the `cache` states.
pub fn build_step(
    cfg: &Gemma4Config,
    weights: &Weights,
    cache: &KvCache,
    spec: &StepSpec,
) -> Result<StepGraph> {
    let t = spec.n_tokens;
    if t == 0 {
        return Err(Error::Input("a step needs at least one token".into()));
    }
    let mut c = Ctx {
        g: GraphBuilder::new(),
        cfg,
        weights,
        bindings: Bindings::new(),
        leaves: HashMap::new(),
    };
    let h = cfg.n_embd;
    let i32_1d = |n: usize| Shape::new(&[n]);
    let tokens = c.g.input("tokens", DType::I32, i32_1d(t)?)?;
    let positions = c.g.input("positions", DType::I32, i32_1d(t)?)?;
    let slots_swa = c.g.input("slots_swa", DType::I32, i32_1d(t)?)?;
    let slots_full = c.g.input("slots_full", DType::I32, i32_1d(t)?)?;
    let n_kv = c.g.input("n_kv", DType::I32, i32_1d(1)?)?;

    let embd = c.w("token_embd.weight")?;
    let x0 = c.g.get_rows(embd, tokens)?;
    let x0 = c.g.scale(x0, (h as f32).sqrt())?;
    let embedding = spec.capture_embedding.then_some(x0);

    // Per-layer embeddings: (RMS(W_proj·x0 / √H) + E_pl[tok]·√D) / √2, as [D, L, t].
    let ple = if cfg.n_embd_per_layer > 0 {
        let (d, n_l) = (cfg.n_embd_per_layer, cfg.n_layer);
        let tok_w = c.w("per_layer_token_embd.weight")?;
        let tok = c.g.get_rows(tok_w, tokens)?;
        let tok = c.g.scale(tok, (d as f32).sqrt())?;
        let tok = c.reshape(tok, &[d, n_l, t])?;
        let proj_w = c.w("per_layer_model_proj.weight")?;
        let proj = c.g.matmul(proj_w, x0)?;
        let proj = c.g.scale(proj, 1.0 / (h as f32).sqrt())?;
        let proj = c.reshape(proj, &[d, n_l, t])?;
        let proj = c.norm(proj, "per_layer_proj_norm.weight")?;
        let sum = c.g.add(proj, tok)?;
        Some(c.g.scale(sum, std::f32::consts::FRAC_1_SQRT_2)?)
    } else {
        None
    };

    let rope_freqs = c.w_opt("rope_freqs.weight")?;
    let kv_src = cfg.kv_source_layers();
    // The written (K, V) cache nodes of each owning layer, reshaped for attention.
    let mut kv_nodes: Vec<Option<(NodeId, NodeId)>> = vec![None; cfg.n_layer];
    let mut captured = Vec::new();
    let mut x = x0;
    for l in 0..cfg.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        let hd = cfg.head_dim(l);
        let n_kv_h = cfg.n_head_kv[l];
        let sliding = cfg.is_sliding[l];
        let rope = if sliding {
            RopeParams {
                theta: cfg.rope_theta_swa,
                n_rot: cfg.n_rot_swa,
            }
        } else {
            RopeParams {
                theta: cfg.rope_theta_full,
                n_rot: cfg.n_rot_full,
            }
        };
        let freqs = if sliding { None } else { rope_freqs };

        let residual = x;
        let hn = c.norm(x, &b("attn_norm.weight"))?;
        let q_w = c.w(&b("attn_q.weight"))?;
        let q = c.g.matmul(q_w, hn)?;
        let q = c.reshape(q, &[hd, cfg.n_head, t])?;
        // The K and V products before the head norms, so the q, k and v norms run back to back
        // (the CUDA backend launches them as one).
        let kv_raw = if kv_src[l] == l {
            let k_w = c.w(&b("attn_k.weight"))?;
            let k_raw = c.g.matmul(k_w, hn)?;
            let k_raw = c.reshape(k_raw, &[hd, n_kv_h, t])?;
            let v_raw = match c.w_opt(&b("attn_v.weight"))? {
                Some(v_w) => {
                    let v = c.g.matmul(v_w, hn)?;
                    c.reshape(v, &[hd, n_kv_h, t])?
                }
                // K=V layers: V is the raw K projection.
                None => k_raw,
            };
            Some((k_raw, v_raw))
        } else {
            None
        };
        let q = c.norm(q, &b("attn_q_norm.weight"))?;
        let q = c.g.rope(q, positions, rope, freqs)?;

        if let Some((k_raw, v_raw)) = kv_raw {
            let layer = cache
                .layer(l)
                .ok_or_else(|| Error::Input(format!("layer {l} has no cache")))?;
            let k = c.norm(k_raw, &b("attn_k_norm.weight"))?;
            let k = c.g.rope(k, positions, rope, freqs)?;
            let v = c.g.rms_norm(v_raw, None, cfg.eps)?;
            let row = hd * n_kv_h;
            let state_shape = Shape::new(&[row, layer.rows])?;
            let k_state = c.g.state(&b("k_cache"), cache.dtype(), state_shape)?;
            let v_state = c.g.state(&b("v_cache"), cache.dtype(), state_shape)?;
            c.bindings.bind(k_state, layer.k);
            c.bindings.bind(v_state, layer.v);
            let slots = if sliding { slots_swa } else { slots_full };
            let k_rows = c.reshape(k, &[row, t])?;
            let v_rows = c.reshape(v, &[row, t])?;
            let k_written = c.g.write_rows(k_state, k_rows, slots)?;
            let v_written = c.g.write_rows(v_state, v_rows, slots)?;
            let k_all = c.reshape(k_written, &[hd, n_kv_h, layer.rows])?;
            let v_all = c.reshape(v_written, &[hd, n_kv_h, layer.rows])?;
            kv_nodes[l] = Some((k_all, v_all));
        }
        let (k_all, v_all) = kv_nodes[kv_src[l]].ok_or_else(|| {
            Error::Input(format!(
                "layer {l}: K/V source layer {} has no cache",
                kv_src[l]
            ))
        })?;
        let params = AttnParams {
            scale: 1.0,
            mask: if sliding {
                AttnMask::SlidingWindow {
                    window: cfg.sliding_window,
                }
            } else {
                AttnMask::Causal
            },
            kv_layout: if sliding {
                KvLayout::Ring
            } else {
                KvLayout::Linear
            },
        };
        let a =
            c.g.attention(q, k_all, v_all, positions, n_kv, None, params)?;
        let a = c.reshape(a, &[hd * cfg.n_head, t])?;
        let o_w = c.w(&b("attn_output.weight"))?;
        let o = c.g.matmul(o_w, a)?;
        let o = c.norm(o, &b("post_attention_norm.weight"))?;
        x = c.g.add(residual, o)?;

        let residual = x;
        let m_in = c.norm(x, &b("ffn_norm.weight"))?;
        let mut m = c.geglu_mlp(m_in, l)?;
        if cfg.moe.is_some() {
            m = c.norm(m, &b("post_ffw_norm_1.weight"))?;
            let e = c.experts(residual, l, t)?;
            let e = c.norm(e, &b("post_ffw_norm_2.weight"))?;
            m = c.g.add(m, e)?;
        }
        let m = c.norm(m, &b("post_ffw_norm.weight"))?;
        x = c.g.add(residual, m)?;

        if let Some(ple) = ple {
            let d = cfg.n_embd_per_layer;
            let pl = c.g.view(
                ple,
                Shape::new(&[d, t])?,
                [1, d * cfg.n_layer, d * cfg.n_layer * t, d * cfg.n_layer * t],
                l * d,
            )?;
            let gate_w = c.w(&b("inp_gate.weight"))?;
            let gate = c.g.matmul(gate_w, x)?;
            let gate = c.g.gelu(gate)?;
            let gated = c.g.mul(gate, pl)?;
            let proj_w = c.w(&b("proj.weight"))?;
            let p = c.g.matmul(proj_w, gated)?;
            let p = c.norm(p, &b("post_norm.weight"))?;
            x = c.g.add(x, p)?;
        }
        if let Some(s) = c.w_opt(&b("layer_output_scale.weight"))? {
            x = c.g.mul(x, s)?;
        }
        if spec.capture_layers.contains(&l) {
            captured.push((l, x));
        }
    }

    let hidden_prenorm = x;
    let hidden = c.norm(x, "output_norm.weight")?;
    // transformers' `hidden_states[n_layer]`, which DFlash's `target_layer_ids` index as
    // `id + 1`, is the last layer's output after the final norm.
    for (l, node) in captured.iter_mut() {
        if *l + 1 == cfg.n_layer {
            *node = hidden;
        }
    }
    let head = match c.w_opt("output.weight")? {
        Some(w) => w,
        None => embd,
    };
    let logits = match spec.logits {
        LogitRows::None => None,
        rows => {
            let hsel = if rows == LogitRows::Last && t > 1 {
                c.g.view(hidden, Shape::new(&[h, 1])?, [1, h, h, h], (t - 1) * h)?
            } else {
                hidden
            };
            let lg = c.g.matmul(head, hsel)?;
            Some(match cfg.final_logit_softcap {
                Some(cap) => c.g.softcap(lg, cap)?,
                None => lg,
            })
        }
    };
    let argmax = match (spec.argmax, logits) {
        (true, Some(lg)) => Some(c.g.argmax(lg)?),
        _ => None,
    };
    let mut outputs = vec![hidden, hidden_prenorm];
    outputs.extend(logits);
    outputs.extend(argmax);
    outputs.extend(captured.iter().map(|&(_, id)| id));
    outputs.extend(embedding);
    let graph = c.g.finish(&outputs)?;
    Ok(StepGraph {
        graph,
        bindings: c.bindings,
        tokens,
        positions,
        slots_swa,
        slots_full,
        n_kv,
        logits,
        hidden,
        hidden_prenorm,
        layers: captured,
        embedding,
        argmax,
    })
}
