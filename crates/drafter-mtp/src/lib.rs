//! The Gemma 4 MTP "assistant" drafter.
//!
//! Google's assistant checkpoints (`Gemma4AssistantForCausalLM`) draft one token per step with
//! four query-only decoder layers that attend to the **target's** KV cache (the last
//! non-shared layer of each attention type, the "donors"). One step takes the token, the
//! target's scaled embedding of it concatenated with the previous hidden state, projects it to
//! the assistant's width, runs the layers at a position that stays constant within a round,
//! and returns the assistant's logits (its own tied head) and, through the post-projection, the
//! hidden state for the next step. The first step of a round takes the target's post-norm
//! hidden state of the last committed token.
//!
//! The drafter attends only to committed positions (never the entries a rejected draft left in
//! the cache): full donors see every committed position, sliding donors the last `window + 1`.
//!
//! ```no_run
//! # fn demo(target: &mut target::Target, prompt: &[u32]) -> Result<(), Box<dyn std::error::Error>> {
//! let assistant = std::sync::Arc::new(gguf::GgufFile::open("gemma-4-31B-it-assistant.gguf")?);
//! let mut drafter = drafter_mtp::MtpDrafter::load(assistant, target)?;
//! let mut sampler = target::Sampler::new(target::SamplingParams::default());
//! let out = target::generate_speculative(target, &mut drafter, prompt, &mut sampler, 128, 4, &|_| false, &mut |_| Ok(()))?;
//! println!("{:.2} tokens per verify", out.acceptance_length());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod config;
mod step;

use std::collections::HashMap;
use std::sync::Arc;

use graph::{BufferId, DType, ExecId, HostBytes, HostData, Shape};
use target::{Draft, DraftRequest, ExternalDrafter, Sampler, StepOutput, Target, Verified};

pub use config::{donor_layers, AssistantConfig, CentroidHead, Layout};
pub use step::{build_step_graph, expected_tensors, StepGraph};

/// Errors of loading or running the assistant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the GGUF file failed.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// Building or running a graph failed.
    #[error(transparent)]
    Graph(#[from] graph::Error),
    /// The file is not an assistant, or does not fit the target.
    #[error("{file}: {reason}")]
    Config {
        /// The assistant file.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<Error> for target::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Gguf(g) => target::Error::Gguf(g),
            Error::Graph(g) => target::Error::Graph(g),
            other => target::Error::Input(other.to_string()),
        }
    }
}

/// Largest γ the drafter accepts.
pub const MAX_GAMMA: usize = 16;

/// An uploaded assistant tensor.
#[derive(Clone, Copy, Debug)]
pub struct Tensor {
    /// Backend buffer.
    pub buffer: BufferId,
    /// Its type.
    pub dtype: DType,
    /// Its shape.
    pub shape: Shape,
}

/// The loaded step graph and its input/output buffers.
struct Loaded {
    step: StepGraph,
    exe: ExecId,
    inputs: [BufferId; 4],
}

/// The MTP drafter, loaded on its target's backend.
pub struct MtpDrafter {
    config: AssistantConfig,
    /// The centroid head's token ordering, when the assistant has one.
    ordering: Option<Vec<u32>>,
    donors: Vec<usize>,
    tensors: HashMap<String, Tensor>,
    loaded: Option<Loaded>,
    sampler: Option<Sampler>,
}

fn file_name(file: &gguf::GgufFile) -> String {
    file.path()
        .map_or_else(|| "<memory>".into(), |p| p.display().to_string())
}

impl MtpDrafter {
    /// Loads the assistant in `file` for `target`: checks that it fits the target (backbone
    /// width, vocabulary, head dimensions of the donor layers), resolves the donor layers from
    /// the target's real layer pattern and uploads the weights to the target's backend.
    pub fn load(file: Arc<gguf::GgufFile>, target: &mut Target) -> Result<MtpDrafter, Error> {
        let config = AssistantConfig::from_gguf(&file)?;
        let bad = |reason: String| Error::Config {
            file: file_name(&file),
            reason,
        };
        let tc = target.config().clone();
        if config.n_backbone != tc.n_embd {
            return Err(bad(format!(
                "this assistant was built for a target of width {}, the target has {} (an assistant for another model)",
                config.n_backbone, tc.n_embd
            )));
        }
        if config.n_vocab != tc.n_vocab {
            return Err(bad(format!(
                "assistant vocabulary {} differs from the target's {}",
                config.n_vocab, tc.n_vocab
            )));
        }
        let donors = donor_layers(&config.is_sliding, &tc).map_err(&bad)?;
        for (l, &d) in donors.iter().enumerate() {
            if config.head_dim(l) != tc.head_dim(d) {
                return Err(bad(format!(
                    "layer {l} has head dimension {}, its donor target layer {d} has {}",
                    config.head_dim(l),
                    tc.head_dim(d)
                )));
            }
            if config.n_head % tc.n_head_kv[d] != 0 {
                return Err(bad(format!(
                    "layer {l}: {} heads do not group over the donor's {} kv heads",
                    config.n_head, tc.n_head_kv[d]
                )));
            }
        }
        let mut tensors = HashMap::new();
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = file.clone();
        for (name, shape) in step::expected_tensors(&config) {
            let Some(info) = file.tensor(&name) else {
                if name.ends_with("layer_output_scale.weight") || name == "rope_freqs.weight" {
                    continue;
                }
                return Err(bad(format!("required tensor '{name}' is missing")));
            };
            let got: Vec<usize> = info.shape().iter().map(|&d| d as usize).collect();
            if got != shape {
                return Err(bad(format!(
                    "tensor '{name}' has shape {got:?}, expected {shape:?}"
                )));
            }
            let shape = Shape::new(&got)?;
            let bytes = HostBytes::shared(
                owner.clone(),
                info.file_offset() as usize,
                info.n_bytes() as usize,
            )?;
            let buffer = target
                .backend_mut()
                .upload(info.ggml_type(), shape, bytes)?;
            tensors.insert(
                name,
                Tensor {
                    buffer,
                    dtype: info.ggml_type(),
                    shape,
                },
            );
        }
        let ordering = match &config.centroids {
            Some(head) => {
                let info = file.require_tensor(&head.ordering)?;
                let bytes = file.tensor_data(info)?;
                let ids: Vec<u32> = bytes
                    .as_chunks::<4>()
                    .0
                    .iter()
                    .map(|c| i32::from_le_bytes(*c) as u32)
                    .collect();
                if ids.iter().any(|&i| i as usize >= config.n_vocab) {
                    return Err(bad(format!(
                        "{} holds token ids outside the vocabulary",
                        head.ordering
                    )));
                }
                Some(ids)
            }
            None => None,
        };
        Ok(MtpDrafter {
            config,
            ordering,
            donors,
            tensors,
            loaded: None,
            sampler: None,
        })
    }

    /// The assistant's hyper-parameters.
    pub fn config(&self) -> &AssistantConfig {
        &self.config
    }

    /// The target layer each assistant layer reads K/V from.
    pub fn donors(&self) -> &[usize] {
        &self.donors
    }

    /// One step: `token` at `position` with the previous hidden state `h_prev`, attending to the
    /// target's first `position` cached positions. Returns (logits, next hidden, argmax).
    pub fn step(
        &mut self,
        target: &mut Target,
        token: u32,
        h_prev: &[f32],
        position: usize,
    ) -> target::Result<(Vec<f32>, Vec<f32>, u32)> {
        self.run_step(target, token, h_prev, position)?;
        let logits = self.output(target, |s| s.logits)?.into_f32()?;
        let (Some(head), Some(ordering), Some(scores)) = (
            &self.config.centroids,
            &self.ordering,
            self.loaded.as_ref().and_then(|l| l.step.centroid_scores),
        ) else {
            let (h_next, arg) = self.hidden_and_argmax(target)?;
            return Ok((logits, h_next, arg));
        };
        let h_next = self.output(target, |s| s.h_next)?.into_f32()?;
        let scores = self.output(target, |_| scores)?.into_f32()?;
        let masked = centroid_logits(&logits, &scores, ordering, head.top_k);
        let arg = target::sampling::argmax(&masked);
        Ok((masked, h_next, arg))
    }

    /// [`Self::step`] for greedy drafting: returns (next hidden, argmax) and, without a
    /// centroid head, leaves the logits on the device (the vocabulary's 1 MB of f32 read back
    /// per step only to be dropped). Same token as `step`'s argmax.
    pub fn step_greedy(
        &mut self,
        target: &mut Target,
        token: u32,
        h_prev: &[f32],
        position: usize,
    ) -> target::Result<(Vec<f32>, u32)> {
        if self.config.centroids.is_some() {
            let (_, h_next, arg) = self.step(target, token, h_prev, position)?;
            return Ok((h_next, arg));
        }
        self.run_step(target, token, h_prev, position)?;
        self.hidden_and_argmax(target)
    }

    /// The last step's next hidden state and the device's argmax of its logits.
    fn hidden_and_argmax(&self, target: &mut Target) -> target::Result<(Vec<f32>, u32)> {
        let h_next = self.output(target, |s| s.h_next)?.into_f32()?;
        let arg = self.output(target, |s| s.argmax)?.into_i32()?;
        Ok((h_next, arg[0] as u32))
    }

    /// Reads the step graph's node `pick` after a run.
    fn output(
        &self,
        target: &mut Target,
        pick: impl Fn(&StepGraph) -> graph::NodeId,
    ) -> target::Result<graph::TensorData> {
        let loaded = self.loaded.as_ref().expect("loaded by run_step");
        let s = &loaded.step;
        Ok(target
            .backend_mut()
            .read_node(loaded.exe, &s.graph, pick(s))?)
    }

    /// Loads the step graph on first use, writes the step's inputs and runs it.
    fn run_step(
        &mut self,
        target: &mut Target,
        token: u32,
        h_prev: &[f32],
        position: usize,
    ) -> target::Result<()> {
        if self.loaded.is_none() {
            let step = build_step_graph(&self.config, &self.donors, &self.tensors, target)?;
            let backend = target.backend_mut();
            let exe = backend.load(&step.graph, &step.bindings)?;
            let inputs = [
                backend.buffer_of(exe, step.token)?,
                backend.buffer_of(exe, step.h_prev)?,
                backend.buffer_of(exe, step.position)?,
                backend.buffer_of(exe, step.n_kv)?,
            ];
            self.loaded = Some(Loaded { step, exe, inputs });
        }
        let loaded = self.loaded.as_ref().expect("loaded above");
        if h_prev.len() != self.config.n_backbone {
            return Err(target::Error::Input(format!(
                "h_prev has {} values, expected {}",
                h_prev.len(),
                self.config.n_backbone
            )));
        }
        let backend = target.backend_mut();
        backend.write(loaded.inputs[0], 0, HostData::I32(&[token as i32]))?;
        backend.write(loaded.inputs[1], 0, HostData::F32(h_prev))?;
        backend.write(loaded.inputs[2], 0, HostData::I32(&[position as i32]))?;
        backend.write(loaded.inputs[3], 0, HostData::I32(&[position as i32]))?;
        Ok(backend.run(loaded.exe)?)
    }
}

/// The centroid head: keeps the logits of the tokens owned by the `top_k` highest-scoring
/// centroids (each centroid owns `vocab / n_centroids` consecutive entries of `ordering`) and
/// sets every other logit to the smallest kept logit minus one.
pub fn centroid_logits(dense: &[f32], scores: &[f32], ordering: &[u32], top_k: usize) -> Vec<f32> {
    let per = ordering.len() / scores.len().max(1);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep = vec![false; dense.len()];
    for &c in order.iter().take(top_k) {
        for &id in &ordering[c * per..(c + 1) * per] {
            keep[id as usize] = true;
        }
    }
    let floor = dense
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(&v, _)| v)
        .fold(f32::INFINITY, f32::min)
        - 1.0;
    dense
        .iter()
        .zip(&keep)
        .map(|(&v, &k)| if k { v } else { floor })
        .collect()
}

impl ExternalDrafter for MtpDrafter {
    fn name(&self) -> &str {
        "mtp"
    }

    fn max_gamma(&self) -> usize {
        MAX_GAMMA
    }

    fn begin(
        &mut self,
        _target: &mut Target,
        _prompt: &[u32],
        _prefill: &StepOutput,
    ) -> target::Result<()> {
        Ok(())
    }

    fn draft(
        &mut self,
        target: &mut Target,
        request: &DraftRequest<'_>,
        sampler: &Sampler,
    ) -> target::Result<Draft> {
        let greedy = sampler.params().is_greedy();
        if !greedy && self.sampler.is_none() {
            // The drafter's own generator, seeded apart from the verifier's.
            let mut params = sampler.params().clone();
            params.seed ^= 0x4D54_5044_5241_4654;
            self.sampler = Some(Sampler::new(params));
        }
        let mut tokens = Vec::with_capacity(request.gamma);
        let mut probs = Vec::new();
        let mut history = request.history.to_vec();
        let mut token = *request
            .history
            .last()
            .ok_or_else(|| target::Error::Input("empty history".into()))?;
        let mut h = request.last_hidden.to_vec();
        for _ in 0..request.gamma {
            let (next, h_next) = if greedy {
                let (h_next, arg) = self.step_greedy(target, token, &h, request.position)?;
                (arg, h_next)
            } else {
                let (logits, h_next, _) = self.step(target, token, &h, request.position)?;
                let s = self.sampler.as_mut().expect("created above for sampling");
                let q = s.distribution(&logits, &history);
                let t = s.draw(&q);
                probs.push(q);
                (t, h_next)
            };
            tokens.push(next);
            history.push(next);
            token = next;
            h = h_next;
        }
        Ok(Draft {
            tokens,
            probs: (!greedy).then_some(probs),
        })
    }

    fn accept(&mut self, _target: &mut Target, _verified: &Verified<'_>) -> target::Result<()> {
        // Stateless between rounds: the next round starts from the target's hidden state of the
        // last committed token, which the loop hands over.
        Ok(())
    }
}
