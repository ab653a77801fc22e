//! The DFlash block-diffusion drafter (z-lab, arXiv 2602.06036).
//!
//! DFlash drafts a whole block in one forward pass: the block input is the target's embedding of
//! `[last token, mask × (B − 1)]` times an embedding scale; a few Qwen3-style layers attend, with
//! queries from the block only, to keys and values of `[context; block]`, where the context is
//! the target's own hidden features (the outputs of chosen target layers, concatenated, through
//! `fc` and a norm); the final norm feeds the target's tied head and soft-cap, and rows 1..B give
//! B − 1 drafts.
//!
//! Context K/V are computed once per committed position (prefix-direct) into the drafter's own
//! states and appended as tokens are accepted; the block's K/V are written after them and simply
//! not counted afterwards. Sliding layers are causal within their window, the full layer is
//! bidirectional.
//!
//! ```no_run
//! # fn demo(target: &mut target::Target, prompt: &[u32]) -> Result<(), Box<dyn std::error::Error>> {
//! let mut drafter = drafter_dflash::DflashDrafter::open("gemma-4-31B-it-DFlash.gguf".as_ref(), target, None)?;
//! let mut sampler = target::Sampler::new(target::SamplingParams::default());
//! let out = target::generate_speculative(target, &mut drafter, prompt, &mut sampler, 256, 15, &|_| false, &mut |_| Ok(()))?;
//! println!("{:.2} tokens per verify", out.acceptance_length());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod source;

use std::collections::HashMap;
use std::path::Path;

use graph::{
    AttnMask, AttnParams, Bindings, BufferId, DType, ExecId, GluOp, Graph, GraphBuilder, HostData,
    KvLayout, NodeId, RopeParams, Shape,
};
use target::{Draft, DraftRequest, ExternalDrafter, Sampler, StepOutput, Target, Verified};

pub use source::{Declared, RawTensor, Source};

/// The drafter's hyper-parameters, checked against its tensors and the target.
#[derive(Clone, Debug, PartialEq)]
pub struct DflashConfig {
    /// Layers.
    pub n_layer: usize,
    /// Width (= the target's).
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Trained block size.
    pub block_size: usize,
    /// Block embedding scale.
    pub embedding_scale: f32,
    /// Logit soft-cap.
    pub softcap: Option<f32>,
    /// Target layers whose outputs form the context features.
    pub target_layers: Vec<usize>,
    /// The mask token.
    pub mask_token: u32,
    /// Sliding (causal, windowed) or full (bidirectional) per layer.
    pub is_sliding: Vec<bool>,
    /// Window of the sliding layers.
    pub sliding_window: usize,
}

type Res<T> = target::Result<T>;

fn err(name: &str, reason: impl Into<String>) -> target::Error {
    target::Error::Input(format!("{name}: {}", reason.into()))
}

/// A graph as built: the graph, its weight bindings, its input nodes and its output nodes.
type Built = (Graph, Bindings, Vec<NodeId>, Vec<NodeId>);

/// A built graph loaded on the target's backend, with its input buffers.
struct Loaded {
    graph: Graph,
    exe: ExecId,
    inputs: Vec<BufferId>,
    outputs: Vec<NodeId>,
}

impl Loaded {
    fn new(target: &mut Target, (graph, bindings, inputs, outputs): Built) -> Res<Loaded> {
        let backend = target.backend_mut();
        let exe = backend.load(&graph, &bindings)?;
        let inputs = inputs
            .into_iter()
            .map(|id| Ok(backend.buffer_of(exe, id)?))
            .collect::<Res<_>>()?;
        Ok(Loaded {
            graph,
            exe,
            inputs,
            outputs,
        })
    }
}

/// How a drafter graph's products of Q8_0 and Q6_K weights treat their activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Products {
    /// Exact: the prompt's context appends (prefill chunks), whose long batches the GPU runs on
    /// many-row kernels that read each weight tile once for many rows.
    Exact,
    /// 8-bit activations ([`GraphBuilder::matmul_q8`], as llama.cpp runs them): block drafts and
    /// the rows each round commits, up to a verify batch. A GPU multiplies them in int8 with a
    /// quarter of the split-f16 kernels' activation bytes; drafts need not be exact (the target
    /// verifies every one).
    Q8,
}

/// A drafter product: Q8_0 and Q6_K weights (the drafter's layers; a Q4_K_M target's tied
/// head) take 8-bit activations under [`Products::Q8`]; every other product is exact.
fn product(g: &mut GraphBuilder, w: NodeId, x: NodeId, products: Products) -> Res<NodeId> {
    let q8_weights = matches!(g.dtype(w)?, DType::Q8_0 | DType::Q6_K);
    Ok(if products == Products::Q8 && q8_weights {
        g.matmul_q8(w, x)?
    } else {
        g.matmul(w, x)?
    })
}

/// The DFlash drafter, loaded on its target's backend.
pub struct DflashDrafter {
    config: DflashConfig,
    tensors: HashMap<String, (BufferId, DType, Shape)>,
    kv: Vec<(BufferId, BufferId)>,
    kv_rows: usize,
    /// Element type of the drafter's K/V rows: the target's KV cache type (f16 on a GPU, where
    /// the tensor-core attention reads them; f32 by default).
    kv_dtype: DType,
    ctx_len: usize,
    block: usize,
    adaptive: bool,
    mean_accepted: f64,
    ctx_graphs: HashMap<(usize, Products), Loaded>,
    /// Block graphs by (tokens, whether the logits and hidden rows are outputs).
    block_graphs: HashMap<(usize, bool), Loaded>,
    sampler: Option<Sampler>,
    /// The last block's outputs: logits rows and final hidden rows (for tests and sampling).
    last_logits: Vec<f32>,
    last_hidden: Vec<f32>,
}

impl DflashDrafter {
    /// Opens a GGUF drafter or a z-lab checkpoint folder for `target`; `block` overrides the
    /// block size (at most the trained one).
    pub fn open(path: &Path, target: &mut Target, block: Option<usize>) -> Res<DflashDrafter> {
        let src = Source::open(path).map_err(target::Error::Input)?;
        Self::load(src, target, block)
    }

    /// Loads a drafter source for `target`: derives sizes from the tensors, checks them against
    /// the target (hidden width, layer ids, block size), uploads the weights and allocates the
    /// context K/V states.
    pub fn load(src: Source, target: &mut Target, block: Option<usize>) -> Res<DflashDrafter> {
        let name = src.name.clone();
        let d = &src.declared;
        let tc = target.config().clone();
        let t = |n: &str| {
            src.tensors
                .get(n)
                .ok_or_else(|| err(&name, format!("required tensor '{n}' is missing")))
        };
        let fc = t("fc.weight")?;
        let n_embd = fc.shape.get(1).copied().unwrap_or(0);
        if n_embd != tc.n_embd {
            return Err(err(&name, format!("drafter width {n_embd} differs from the target's {} (a drafter for another target)", tc.n_embd)));
        }
        let n_capture = fc.shape[0] / n_embd.max(1);
        if n_capture * n_embd != fc.shape[0] || n_capture != d.target_layers.len() {
            return Err(err(
                &name,
                format!(
                    "fc.weight {:?} does not match {} target layers of width {n_embd}",
                    fc.shape,
                    d.target_layers.len()
                ),
            ));
        }
        if let Some(v) = d.n_vocab.filter(|&v| v != tc.n_vocab) {
            return Err(err(&name, format!("drafter vocabulary of {v} tokens differs from the target's {} (a drafter for another target)", tc.n_vocab)));
        }
        if let Some(&bad) = d.target_layers.iter().find(|&&l| l >= tc.n_layer) {
            return Err(err(
                &name,
                format!(
                    "target layer id {bad} is out of range: the target has {} layers",
                    tc.n_layer
                ),
            ));
        }
        let head_dim = t("blk.0.attn_q_norm.weight")?.shape[0];
        let n_head = t("blk.0.attn_q.weight")?.shape[1] / head_dim.max(1);
        let n_head_kv = t("blk.0.attn_k.weight")?.shape[1] / head_dim.max(1);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(err(
                &name,
                format!("{n_head} query heads over {n_head_kv} kv heads of dim {head_dim}"),
            ));
        }
        let mask_token = d
            .mask_token
            .ok_or_else(|| err(&name, "no mask token id (tokenizer.ggml.mask_token_id)"))?;
        if mask_token as usize >= tc.n_vocab {
            return Err(err(
                &name,
                format!("mask token {mask_token} is outside the target's vocabulary"),
            ));
        }
        let mut is_sliding = d.is_sliding.clone();
        is_sliding.resize(d.n_layer, false);
        let config = DflashConfig {
            n_layer: d.n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            eps: d.eps,
            rope_theta: d.rope_theta,
            block_size: d.block_size,
            embedding_scale: d.embedding_scale,
            softcap: d.softcap,
            target_layers: d.target_layers.clone(),
            mask_token,
            is_sliding,
            sliding_window: d.sliding_window,
        };
        let block = block.unwrap_or(config.block_size);
        if block < 2 || block > config.block_size {
            return Err(err(
                &name,
                format!(
                    "block size {block} must be in 2..={} (the trained size)",
                    config.block_size
                ),
            ));
        }
        let mut names = vec![
            "fc.weight".to_string(),
            "enc.output_norm.weight".into(),
            "output_norm.weight".into(),
        ];
        for l in 0..config.n_layer {
            for s in [
                "attn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "attn_q_norm",
                "attn_k_norm",
                "ffn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                names.push(format!("blk.{l}.{s}.weight"));
            }
        }
        let mut tensors = HashMap::new();
        for n in names {
            let raw = t(&n)?;
            let shape = Shape::new(&raw.shape)?;
            let buffer = target
                .backend_mut()
                .upload(raw.dtype, shape, raw.bytes.clone())?;
            tensors.insert(n, (buffer, raw.dtype, shape));
        }
        let kv_rows = target.cache().n_ctx() + config.block_size;
        let kv_dtype = target.cache().dtype();
        let row = config.head_dim * config.n_head_kv;
        let mut kv = Vec::with_capacity(config.n_layer);
        for _ in 0..config.n_layer {
            let k = target
                .backend_mut()
                .alloc(kv_dtype, Shape::new(&[row, kv_rows])?)?;
            let v = target
                .backend_mut()
                .alloc(kv_dtype, Shape::new(&[row, kv_rows])?)?;
            kv.push((k, v));
        }
        Ok(DflashDrafter {
            config,
            tensors,
            kv,
            kv_rows,
            kv_dtype,
            ctx_len: 0,
            block,
            adaptive: false,
            mean_accepted: 0.0,
            ctx_graphs: HashMap::new(),
            block_graphs: HashMap::new(),
            sampler: None,
            last_logits: Vec::new(),
            last_hidden: Vec::new(),
        })
    }

    /// The drafter's hyper-parameters.
    pub fn config(&self) -> &DflashConfig {
        &self.config
    }

    /// Adaptive block size: grows the block while drafts are accepted, shrinks it when they
    /// are not (between 2 and the configured size).
    pub fn set_adaptive(&mut self, adaptive: bool) {
        self.adaptive = adaptive;
    }

    /// The block size the next round will use.
    pub fn current_block(&self) -> usize {
        if !self.adaptive {
            return self.block;
        }
        ((self.mean_accepted * 2.0).ceil() as usize + 2).clamp(2, self.block)
    }

    /// Context positions whose K/V the drafter holds.
    pub fn context_len(&self) -> usize {
        self.ctx_len
    }

    /// Logits rows (`[rows][vocab]`, soft-capped) and final hidden rows of the last `run_block`
    /// call or sampled draft (greedy drafts run a graph that computes neither: these keep what
    /// the last such call left).
    pub fn last_block(&self) -> (&[f32], &[f32]) {
        (&self.last_logits, &self.last_hidden)
    }

    fn w(
        &self,
        g: &mut GraphBuilder,
        b: &mut Bindings,
        cache: &mut HashMap<String, NodeId>,
        name: &str,
    ) -> Res<NodeId> {
        if let Some(&id) = cache.get(name) {
            return Ok(id);
        }
        let &(buf, dt, shape) = self
            .tensors
            .get(name)
            .ok_or_else(|| target::Error::Input(format!("tensor '{name}' not loaded")))?;
        let id = g.weight(name, dt, shape)?;
        b.bind(id, buf);
        cache.insert(name.to_string(), id);
        Ok(id)
    }

    fn states(&self, g: &mut GraphBuilder, b: &mut Bindings, l: usize) -> Res<(NodeId, NodeId)> {
        let row = self.config.head_dim * self.config.n_head_kv;
        let shape = Shape::new(&[row, self.kv_rows])?;
        let k = g.state(&format!("dflash.{l}.k"), self.kv_dtype, shape)?;
        let v = g.state(&format!("dflash.{l}.v"), self.kv_dtype, shape)?;
        b.bind(k, self.kv[l].0);
        b.bind(v, self.kv[l].1);
        Ok((k, v))
    }

    /// A projection `[heads · hd, n]` as `[hd, heads, n]`, RMS-normed per head with `norm` and
    /// rotated at `pos` (the q and k paths).
    fn heads_norm_rope(
        &self,
        g: &mut GraphBuilder,
        x: NodeId,
        heads: usize,
        n: usize,
        norm: NodeId,
        pos: NodeId,
    ) -> Res<NodeId> {
        let c = &self.config;
        let x = g.reshape(x, Shape::new(&[c.head_dim, heads, n])?)?;
        let x = g.rms_norm(x, Some(norm), c.eps)?;
        let rope = RopeParams {
            theta: c.rope_theta,
            n_rot: c.head_dim,
        };
        Ok(g.rope(x, pos, rope, None)?)
    }

    /// K (normed, rotated) and V of `x` (`[H, n]`) for layer `l`, written at `slots`; returns the
    /// written states viewed as `[hd, n_kv, rows]`.
    #[allow(clippy::too_many_arguments)]
    fn write_kv(
        &self,
        g: &mut GraphBuilder,
        b: &mut Bindings,
        w: &mut HashMap<String, NodeId>,
        l: usize,
        x: NodeId,
        n: usize,
        pos: NodeId,
        slots: NodeId,
        products: Products,
    ) -> Res<(NodeId, NodeId)> {
        let c = &self.config;
        let (hd, nkv) = (c.head_dim, c.n_head_kv);
        let wk = self.w(g, b, w, &format!("blk.{l}.attn_k.weight"))?;
        let wv = self.w(g, b, w, &format!("blk.{l}.attn_v.weight"))?;
        let kn = self.w(g, b, w, &format!("blk.{l}.attn_k_norm.weight"))?;
        let k = product(g, wk, x, products)?;
        let k = self.heads_norm_rope(g, k, nkv, n, kn, pos)?;
        let v = product(g, wv, x, products)?;
        let (ks, vs) = self.states(g, b, l)?;
        let k = g.reshape(k, Shape::new(&[hd * nkv, n])?)?;
        let kw = g.write_rows(ks, k, slots)?;
        let vw = g.write_rows(vs, v, slots)?;
        Ok((
            g.reshape(kw, Shape::new(&[hd, nkv, self.kv_rows])?)?,
            g.reshape(vw, Shape::new(&[hd, nkv, self.kv_rows])?)?,
        ))
    }

    /// The graph appending `n` context rows: features `[n_capture · H, n]` → fc → norm → K/V.
    fn build_ctx(&self, n: usize, products: Products) -> Res<Built> {
        let c = &self.config;
        let mut g = GraphBuilder::new();
        let mut b = Bindings::new();
        let mut w = HashMap::new();
        let feats = g.input(
            "features",
            DType::F32,
            Shape::new(&[c.n_embd * c.target_layers.len(), n])?,
        )?;
        let pos = g.input("positions", DType::I32, Shape::new(&[n])?)?;
        let fc = self.w(&mut g, &mut b, &mut w, "fc.weight")?;
        let hn = self.w(&mut g, &mut b, &mut w, "enc.output_norm.weight")?;
        let x = product(&mut g, fc, feats, products)?;
        let x = g.rms_norm(x, Some(hn), c.eps)?;
        let mut outs = Vec::new();
        for l in 0..c.n_layer {
            let (k, v) = self.write_kv(&mut g, &mut b, &mut w, l, x, n, pos, pos, products)?;
            outs.extend([k, v]);
        }
        Ok((g.finish(&outs)?, b, vec![feats, pos], Vec::new()))
    }

    /// The block graph for `n` tokens at positions `ctx_len..ctx_len + n`: its outputs are the
    /// softcapped logits, the final hidden rows and their argmax, or with `rows_out` off only
    /// the argmax, taken of the logits before the softcap (greedy drafts: `cap · tanh(x / cap)`
    /// increases strictly, so the argmax is the same but where the f32 softcap ties or swaps
    /// nearly equal logits, which drafts may; the 16 × 262,144-logit softcap is skipped).
    fn build_block(&self, target: &Target, n: usize, rows_out: bool) -> Res<Built> {
        let c = &self.config;
        let mut g = GraphBuilder::new();
        let mut b = Bindings::new();
        let mut w = HashMap::new();
        let tokens = g.input("tokens", DType::I32, Shape::new(&[n])?)?;
        let pos = g.input("positions", DType::I32, Shape::new(&[n])?)?;
        let n_kv = g.input("n_kv", DType::I32, Shape::new(&[1])?)?;
        let embd = target
            .weight("token_embd.weight")
            .ok_or_else(|| target::Error::Input("the target has no token_embd.weight".into()))?;
        let e = g.weight("target.token_embd.weight", embd.dtype, embd.shape)?;
        b.bind(e, embd.buffer);
        let head = match target.weight("output.weight") {
            Some(o) => {
                let id = g.weight("target.output.weight", o.dtype, o.shape)?;
                b.bind(id, o.buffer);
                id
            }
            None => e,
        };
        let x = g.get_rows(e, tokens)?;
        let mut h = g.scale(x, c.embedding_scale)?;
        let (hd, nh) = (c.head_dim, c.n_head);
        for l in 0..c.n_layer {
            let an = self.w(&mut g, &mut b, &mut w, &format!("blk.{l}.attn_norm.weight"))?;
            let wq = self.w(&mut g, &mut b, &mut w, &format!("blk.{l}.attn_q.weight"))?;
            let qn = self.w(
                &mut g,
                &mut b,
                &mut w,
                &format!("blk.{l}.attn_q_norm.weight"),
            )?;
            let wo = self.w(
                &mut g,
                &mut b,
                &mut w,
                &format!("blk.{l}.attn_output.weight"),
            )?;
            let fnorm = self.w(&mut g, &mut b, &mut w, &format!("blk.{l}.ffn_norm.weight"))?;
            let gate = self.w(&mut g, &mut b, &mut w, &format!("blk.{l}.ffn_gate.weight"))?;
            let up = self.w(&mut g, &mut b, &mut w, &format!("blk.{l}.ffn_up.weight"))?;
            let down = self.w(&mut g, &mut b, &mut w, &format!("blk.{l}.ffn_down.weight"))?;
            let xn = g.rms_norm(h, Some(an), c.eps)?;
            let q = product(&mut g, wq, xn, Products::Q8)?;
            let q = self.heads_norm_rope(&mut g, q, nh, n, qn, pos)?;
            let (k, v) = self.write_kv(&mut g, &mut b, &mut w, l, xn, n, pos, pos, Products::Q8)?;
            let mask = if c.is_sliding[l] {
                AttnMask::SlidingWindow {
                    window: c.sliding_window.max(1),
                }
            } else {
                AttnMask::None
            };
            let params = AttnParams {
                scale: 1.0 / (hd as f32).sqrt(),
                mask,
                kv_layout: KvLayout::Linear,
            };
            let a = g.attention(q, k, v, pos, n_kv, None, params)?;
            let a = g.reshape(a, Shape::new(&[hd * nh, n])?)?;
            let o = product(&mut g, wo, a, Products::Q8)?;
            h = g.add(h, o)?;
            let m_in = g.rms_norm(h, Some(fnorm), c.eps)?;
            let gt = product(&mut g, gate, m_in, Products::Q8)?;
            let u = product(&mut g, up, m_in, Products::Q8)?;
            let act = g.glu(GluOp::SwiGlu, gt, u)?;
            let m = product(&mut g, down, act, Products::Q8)?;
            h = g.add(h, m)?;
        }
        let on = self.w(&mut g, &mut b, &mut w, "output_norm.weight")?;
        let hidden = g.rms_norm(h, Some(on), c.eps)?;
        let raw = product(&mut g, head, hidden, Products::Q8)?;
        if !rows_out {
            let ids = g.argmax(raw)?;
            return Ok((g.finish(&[ids])?, b, vec![tokens, pos, n_kv], vec![ids]));
        }
        let logits = match c.softcap {
            Some(cap) => g.softcap(raw, cap)?,
            None => raw,
        };
        let ids = g.argmax(logits)?;
        // Outputs in the order `run_block_inner` reads them.
        let outputs = vec![logits, hidden, ids];
        Ok((g.finish(&outputs)?, b, vec![tokens, pos, n_kv], outputs))
    }

    /// Appends context features for positions `ctx_len..ctx_len + rows`, taken from the target's
    /// captured layer outputs (`layers[i]` = `[rows][H]` for `target_layers[i]`), with exact
    /// products (as for a prefill chunk).
    pub fn append_context(
        &mut self,
        target: &mut Target,
        outputs: &StepOutput,
        rows: usize,
    ) -> Res<()> {
        self.append(target, outputs, rows, Products::Exact)
    }

    /// [`DflashDrafter::append_context`] with the products `products`.
    fn append(
        &mut self,
        target: &mut Target,
        outputs: &StepOutput,
        rows: usize,
        products: Products,
    ) -> Res<()> {
        let c = self.config.clone();
        let h = c.n_embd;
        let mut feats = vec![0.0f32; rows * h * c.target_layers.len()];
        for (i, &l) in c.target_layers.iter().enumerate() {
            let (_, data) = outputs
                .layers
                .iter()
                .find(|(id, _)| *id == l)
                .ok_or_else(|| {
                    target::Error::Input(format!("the target did not capture layer {l}"))
                })?;
            for r in 0..rows {
                feats[r * h * c.target_layers.len() + i * h..][..h]
                    .copy_from_slice(&data[r * h..(r + 1) * h]);
            }
        }
        for start in (0..rows).step_by(target.max_batch()) {
            let n = (rows - start).min(target.max_batch());
            if !self.ctx_graphs.contains_key(&(n, products)) {
                let built = self.build_ctx(n, products)?;
                self.ctx_graphs
                    .insert((n, products), Loaded::new(target, built)?);
            }
            let loaded = &self.ctx_graphs[&(n, products)];
            let per = h * c.target_layers.len();
            let pos: Vec<i32> = (self.ctx_len..self.ctx_len + n).map(|p| p as i32).collect();
            if self.ctx_len + n > self.kv_rows {
                return Err(target::Error::Input(format!(
                    "context of {} positions exceeds the drafter's {}",
                    self.ctx_len + n,
                    self.kv_rows
                )));
            }
            let backend = target.backend_mut();
            backend.write(
                loaded.inputs[0],
                0,
                HostData::F32(&feats[start * per..(start + n) * per]),
            )?;
            backend.write(loaded.inputs[1], 0, HostData::I32(&pos))?;
            backend.run(loaded.exe)?;
            self.ctx_len += n;
        }
        Ok(())
    }

    /// Runs the block `[anchor, mask × (n − 1)]` at positions `ctx_len..`; returns the argmax of
    /// rows 1..n (the drafts). The logits and hidden rows stay available via `last_block`.
    pub fn run_block(&mut self, target: &mut Target, anchor: u32, n: usize) -> Res<Vec<u32>> {
        self.run_block_inner(target, anchor, n, true)
    }

    /// Runs the block; the drafts come from the device's argmax. With `outputs` set the graph
    /// also outputs the softcapped logits and hidden rows (`[n][vocab]`, `[n][H]`), read back
    /// for `last_block`; without, its argmax is of the logits before the softcap.
    fn run_block_inner(
        &mut self,
        target: &mut Target,
        anchor: u32,
        n: usize,
        outputs: bool,
    ) -> Res<Vec<u32>> {
        let key = (n, outputs);
        if !self.block_graphs.contains_key(&key) {
            let built = self.build_block(target, n, outputs)?;
            self.block_graphs.insert(key, Loaded::new(target, built)?);
        }
        if self.ctx_len + n > self.kv_rows {
            return Err(target::Error::Input(format!(
                "block at {} exceeds the drafter's {} positions",
                self.ctx_len, self.kv_rows
            )));
        }
        let loaded = &self.block_graphs[&key];
        let mut tokens = vec![self.config.mask_token as i32; n];
        tokens[0] = anchor as i32;
        let pos: Vec<i32> = (self.ctx_len..self.ctx_len + n).map(|p| p as i32).collect();
        let backend = target.backend_mut();
        backend.write(loaded.inputs[0], 0, HostData::I32(&tokens))?;
        backend.write(loaded.inputs[1], 0, HostData::I32(&pos))?;
        backend.write(
            loaded.inputs[2],
            0,
            HostData::I32(&[(self.ctx_len + n) as i32]),
        )?;
        backend.run(loaded.exe)?;
        let argmax = *loaded
            .outputs
            .last()
            .expect("block graphs output their argmax");
        let ids = backend
            .read_node(loaded.exe, &loaded.graph, argmax)?
            .into_i32()?;
        if let [logits, hidden, _] = loaded.outputs[..] {
            self.last_logits = backend
                .read_node(loaded.exe, &loaded.graph, logits)?
                .into_f32()?;
            self.last_hidden = backend
                .read_node(loaded.exe, &loaded.graph, hidden)?
                .into_f32()?;
        }
        Ok(ids.into_iter().skip(1).map(|t| t as u32).collect())
    }
}

impl ExternalDrafter for DflashDrafter {
    fn name(&self) -> &str {
        "dflash"
    }

    fn max_gamma(&self) -> usize {
        self.block - 1
    }

    fn required_layers(&self) -> Vec<usize> {
        self.config.target_layers.clone()
    }

    fn prefill_chunk(&mut self, target: &mut Target, outputs: &StepOutput) -> Res<()> {
        // Rows from the captured layers: `hidden` holds only the last row of a prefill chunk
        // that asked for the last logits.
        let Some((_, first)) = outputs.layers.first() else {
            return Err(target::Error::Input(
                "a DFlash prefill chunk needs the target layers it reads captured".into(),
            ));
        };
        let rows = first.len() / self.config.n_embd;
        // The chunk covers the target's last `rows` positions. A new prompt after the target
        // was truncated starts below the drafter's context: the context is cut there too (its
        // rows are rewritten), as the target's KV cache is.
        let start = target.n_past().checked_sub(rows).ok_or_else(|| {
            target::Error::Input(format!(
                "a prefill chunk of {rows} rows but the target holds {} positions",
                target.n_past()
            ))
        })?;
        if start > self.ctx_len {
            return Err(target::Error::Input(format!(
                "drafter context holds {} positions, the prefill chunk starts at {start}",
                self.ctx_len
            )));
        }
        self.ctx_len = start;
        self.append_context(target, outputs, rows)
    }

    fn begin(&mut self, _target: &mut Target, _prompt: &[u32], _prefill: &StepOutput) -> Res<()> {
        Ok(())
    }

    fn draft(
        &mut self,
        target: &mut Target,
        request: &DraftRequest<'_>,
        sampler: &Sampler,
    ) -> Res<Draft> {
        if self.ctx_len != request.position {
            return Err(target::Error::Input(format!(
                "drafter context holds {} positions, the target {}",
                self.ctx_len, request.position
            )));
        }
        // The whole block runs even when fewer drafts are wanted: its attention is
        // bidirectional, so a shorter block would change the drafts it was trained to make.
        let n = self.current_block();
        let keep = request.gamma.min(n - 1);
        let anchor = *request
            .history
            .last()
            .ok_or_else(|| target::Error::Input("empty history".into()))?;
        let greedy = sampler.params().is_greedy();
        let mut tokens = self.run_block_inner(target, anchor, n, !greedy)?;
        tokens.truncate(keep);
        if greedy {
            return Ok(Draft {
                tokens,
                probs: None,
            });
        }
        if self.sampler.is_none() {
            let mut p = sampler.params().clone();
            p.seed ^= 0x4446_4C41_5348;
            self.sampler = Some(Sampler::new(p));
        }
        let s = self.sampler.as_mut().expect("set above");
        let v = self.last_logits.len() / n;
        let mut probs = Vec::new();
        let mut history = request.history.to_vec();
        for (i, row) in self.last_logits.chunks(v).skip(1).take(keep).enumerate() {
            let q = s.distribution(row, &history);
            tokens[i] = s.draw(&q);
            history.push(tokens[i]);
            probs.push(q);
        }
        Ok(Draft {
            tokens,
            probs: Some(probs),
        })
    }

    fn accept(&mut self, target: &mut Target, verified: &Verified<'_>) -> Res<()> {
        self.mean_accepted = 0.7 * self.mean_accepted + 0.3 * verified.accepted as f64;
        // Context features of the committed rows: cur and the accepted drafts.
        self.append(
            target,
            verified.outputs,
            verified.accepted + 1,
            Products::Q8,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// A file of the bundled trio (`assets/`: a Q4_K_M target and its Q8_0 DFlash drafter).
    fn asset(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../assets")
            .join(name)
    }

    /// The bundled Q4_K_M target (`n_ctx` positions, batches up to 16) on the CPU and its Q8_0
    /// DFlash drafter.
    fn bundled_trio(n_ctx: usize) -> (Target, DflashDrafter) {
        let file = gguf::GgufFile::open(asset("specula-py-target.q4_k_m.gguf")).unwrap();
        let options = target::TargetOptions {
            n_ctx,
            max_batch: 16,
            ..Default::default()
        };
        let mut t = Target::load(
            Arc::new(file),
            Box::new(graph::CpuBackend::new()),
            &options,
            &mut |_, _| {},
        )
        .unwrap();
        let d = DflashDrafter::open(&asset("specula-py-dflash.q8_0.gguf"), &mut t, None).unwrap();
        (t, d)
    }

    fn q8_products(built: &Built) -> usize {
        built
            .0
            .nodes()
            .iter()
            .filter(|n| n.op == graph::Op::MatMulQ8)
            .count()
    }

    /// The greedy block graph (argmax of the logits before the softcap, no logits out) drafts
    /// the tokens the full graph does, on the bundled trio after a prompt, at several anchors.
    #[test]
    fn greedy_blocks_draft_what_full_blocks_do() {
        let (mut t, mut d) = bundled_trio(96);
        assert!(d.config().softcap.is_some(), "the bundled drafter softcaps");
        let prompt: Vec<u32> = (0..16u32).map(|i| 40 + 7 * i).collect();
        let layers = d.required_layers();
        let out = t
            .forward(&prompt, target::LogitRows::None, &layers, false)
            .unwrap();
        d.prefill_chunk(&mut t, &out).unwrap();
        let n = d.current_block();
        for anchor in [3u32, 97, 1000, 2047] {
            let full = d.run_block_inner(&mut t, anchor, n, true).unwrap();
            let greedy = d.run_block_inner(&mut t, anchor, n, false).unwrap();
            assert_eq!(greedy, full, "anchor {anchor}");
        }
    }

    /// A Q8_0 drafter's block graph (its tied Q6_K head too) and the context rows a round
    /// commits take 8-bit activations; a prompt's context append stays exact, however few its
    /// rows.
    #[test]
    fn prompt_appends_are_exact_and_drafts_take_8_bit_activations() {
        let (t, d) = bundled_trio(64);
        let layers = d.config().n_layer;
        // fc and each layer's k and v.
        assert_eq!(
            q8_products(&d.build_ctx(3, Products::Q8).unwrap()),
            1 + 2 * layers
        );
        assert_eq!(q8_products(&d.build_ctx(3, Products::Exact).unwrap()), 0);
        // q, k, v, o, gate, up and down of each layer, and the head (the target's tied Q6_K
        // token embedding).
        assert_eq!(
            q8_products(&d.build_block(&t, 4, true).unwrap()),
            7 * layers + 1
        );
        assert_eq!(
            q8_products(&d.build_block(&t, 4, false).unwrap()),
            7 * layers + 1
        );
    }
}
