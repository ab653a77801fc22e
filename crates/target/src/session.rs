//! [`Target`]: a Gemma 4 model loaded on a backend with one KV cache, running step graphs
//! that are built once per [`StepSpec`] and replayed with new inputs.

use std::collections::HashMap;
use std::sync::Arc;

use gguf::GgufFile;
use graph::{Backend, DType, ExecId, HostData, NodeId};

use crate::config::Gemma4Config;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::models::gemma4::{build_step, LogitRows, StepGraph, StepSpec};
use crate::weights::{MemoryPlanInput, Weights};

/// Options for loading a target.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    /// Context length to allocate (positions); capped by the model's training context.
    pub n_ctx: usize,
    /// Largest batch one step takes (prefill chunk, verify batch).
    pub max_batch: usize,
    /// Element type of the KV cache.
    pub kv_dtype: DType,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            n_ctx: 4096,
            max_batch: 64,
            kv_dtype: DType::F32,
        }
    }
}

/// What one step returns.
#[derive(Clone, Debug, Default)]
pub struct StepOutput {
    /// Logits, row-major `[rows][n_vocab]` (one row per token, or only the last).
    pub logits: Vec<f32>,
    /// Final post-norm hidden, `[t][n_embd]` (only the last row when the logits are
    /// [`LogitRows::Last`]).
    pub hidden: Vec<f32>,
    /// Input of the final norm, `[t][n_embd]` (only the last row, as `hidden`).
    pub hidden_prenorm: Vec<f32>,
    /// Captured layer outputs, `[t][n_embd]` each.
    pub layers: Vec<(usize, Vec<f32>)>,
    /// Scaled embeddings, if asked for.
    pub embedding: Option<Vec<f32>>,
}

/// A loaded step graph.
struct Loaded {
    step: StepGraph,
    exe: ExecId,
    /// Buffers of the input leaves.
    buffers: HashMap<NodeId, graph::BufferId>,
}

/// A Gemma 4 target on a backend, with its KV cache.
pub struct Target {
    config: Gemma4Config,
    backend: Box<dyn Backend>,
    weights: Weights,
    cache: KvCache,
    max_batch: usize,
    steps: HashMap<StepSpec, Loaded>,
}

impl Target {
    /// Reads the config, checks and uploads the weights, and allocates the KV cache.
    pub fn load(
        file: Arc<GgufFile>,
        mut backend: Box<dyn Backend>,
        options: &TargetOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Target> {
        let config = Gemma4Config::from_gguf(&file)?;
        let n_ctx = options.n_ctx.min(config.n_ctx_train);
        let plan = MemoryPlanInput {
            n_ctx,
            max_batch: options.max_batch,
            kv_dtype: options.kv_dtype,
        };
        let weights = Weights::load(&file, &config, &plan, backend.as_mut(), progress)?;
        let cache = KvCache::new(
            &config,
            backend.as_mut(),
            n_ctx,
            options.max_batch,
            options.kv_dtype,
        )?;
        Ok(Target {
            config,
            backend,
            weights,
            cache,
            max_batch: options.max_batch,
            steps: HashMap::new(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Gemma4Config {
        &self.config
    }

    /// The KV cache.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// The backend (drafters read the target's K/V through it).
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    /// An uploaded weight of the target, by GGUF tensor name (drafters share the target's
    /// embedding and head this way).
    pub fn weight(&self, name: &str) -> Option<crate::weights::WeightRef> {
        self.weights.get(name).copied()
    }

    /// Largest batch one step takes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Committed positions.
    pub fn n_past(&self) -> usize {
        self.cache.n_past()
    }

    /// Drops every position from `n` on.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        self.cache.truncate(n)
    }

    /// For benchmarks only: counts `n` more positions as committed without computing them, so
    /// a step can be timed at a context depth without prefilling it. Their K/V rows keep
    /// whatever the cache held; attention cost depends on the number of rows, not their values.
    /// Output after this is meaningless.
    pub fn assume_positions_for_bench(&mut self, n: usize) -> Result<()> {
        let total = self.cache.n_past() + n;
        if total > self.cache.n_ctx() {
            return Err(Error::Input(format!(
                "context of {total} positions exceeds the maximum of {}",
                self.cache.n_ctx()
            )));
        }
        self.cache.advance(n);
        Ok(())
    }

    /// Checks `tokens` and `spec`, loads the step graph on first use, writes the inputs, runs
    /// the step and commits the positions.
    fn run_step(&mut self, tokens: &[u32], spec: &StepSpec) -> Result<()> {
        let t = tokens.len();
        if t == 0 || t > self.max_batch {
            return Err(Error::Input(format!(
                "a step takes 1 to {} tokens, got {t}",
                self.max_batch
            )));
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&id| id as usize >= self.config.n_vocab)
        {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.config.n_vocab
            )));
        }
        if let Some(&bad) = spec
            .capture_layers
            .iter()
            .find(|&&l| l >= self.config.n_layer)
        {
            return Err(Error::Input(format!(
                "layer {bad} does not exist ({} layers)",
                self.config.n_layer
            )));
        }
        let start = self.cache.n_past();
        let (slots_swa, slots_full) = self.cache.slots(start, t)?;
        if !self.steps.contains_key(spec) {
            let step = build_step(&self.config, &self.weights, &self.cache, spec)?;
            let exe = self.backend.load(&step.graph, &step.bindings)?;
            let mut buffers = HashMap::new();
            for node in [
                step.tokens,
                step.positions,
                step.slots_swa,
                step.slots_full,
                step.n_kv,
            ] {
                buffers.insert(node, self.backend.buffer_of(exe, node)?);
            }
            self.steps
                .insert(spec.clone(), Loaded { step, exe, buffers });
        }
        let loaded = &self.steps[spec];
        let ids: Vec<i32> = tokens.iter().map(|&x| x as i32).collect();
        let pos: Vec<i32> = (start..start + t).map(|p| p as i32).collect();
        let n_kv = [(start + t) as i32];
        let s = &loaded.step;
        let b = &loaded.buffers;
        for (node, data) in [
            (s.tokens, &ids[..]),
            (s.positions, &pos[..]),
            (s.slots_swa, &slots_swa[..]),
            (s.slots_full, &slots_full[..]),
            (s.n_kv, &n_kv[..]),
        ] {
            self.backend.write(b[&node], 0, HostData::I32(data))?;
        }
        self.backend.run(loaded.exe)?;
        self.cache.advance(t);
        Ok(())
    }

    /// The rows of `node` (`[width][rows]`, dense) that `rows` asks logits for: only the last
    /// one for [`LogitRows::Last`] (a prefill chunk's caller needs no more, and 512 hidden rows
    /// of a large model are 11 MB to copy), else all.
    fn read_rows(&self, spec: &StepSpec, node: NodeId, rows: LogitRows) -> Result<Vec<f32>> {
        let loaded = &self.steps[spec];
        let n = loaded.step.graph.node(node);
        let (width, count) = (n.shape().ne(0), n.shape().n_rows());
        if rows != LogitRows::Last || count <= 1 || !n.layout.is_contiguous() {
            return self.read(spec, node);
        }
        let buffer = self.backend.buffer_of(loaded.exe, node)?;
        let last = n.layout.offset + (count - 1) * width;
        Ok(self.backend.read_range(buffer, last, width)?.into_f32()?)
    }

    fn read(&self, spec: &StepSpec, node: NodeId) -> Result<Vec<f32>> {
        let loaded = &self.steps[spec];
        Ok(self
            .backend
            .read_node(loaded.exe, &loaded.step.graph, node)?
            .into_f32()?)
    }

    /// Runs `tokens` at positions `n_past..n_past + len`, writing their K/V and committing them,
    /// and returns logits, hidden states and the captured layers.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        logits: LogitRows,
        capture_layers: &[usize],
        capture_embedding: bool,
    ) -> Result<StepOutput> {
        let spec = StepSpec {
            n_tokens: tokens.len(),
            logits,
            capture_layers: capture_layers.to_vec(),
            capture_embedding,
            argmax: false,
        };
        self.run_step(tokens, &spec)?;
        let s = &self.steps[&spec].step;
        let (logit_node, hidden, prenorm, embedding) =
            (s.logits, s.hidden, s.hidden_prenorm, s.embedding);
        let layer_nodes = s.layers.clone();
        Ok(StepOutput {
            logits: logit_node
                .map(|n| self.read(&spec, n))
                .transpose()?
                .unwrap_or_default(),
            hidden: self.read_rows(&spec, hidden, logits)?,
            hidden_prenorm: self.read_rows(&spec, prenorm, logits)?,
            layers: layer_nodes
                .iter()
                .map(|&(l, id)| Ok((l, self.read(&spec, id)?)))
                .collect::<Result<_>>()?,
            embedding: embedding.map(|n| self.read(&spec, n)).transpose()?,
        })
    }

    /// Like [`Target::forward`] but returns only the argmax token of each logit row, computed
    /// on the device: on a GPU only token ids cross to the host.
    pub fn forward_argmax(&mut self, tokens: &[u32], rows: LogitRows) -> Result<Vec<u32>> {
        if rows == LogitRows::None {
            return Err(Error::Input("forward_argmax needs logit rows".into()));
        }
        let spec = StepSpec {
            n_tokens: tokens.len(),
            logits: rows,
            capture_layers: Vec::new(),
            capture_embedding: false,
            argmax: true,
        };
        self.run_step(tokens, &spec)?;
        let loaded = &self.steps[&spec];
        let node = loaded
            .step
            .argmax
            .ok_or_else(|| Error::Input("the step has no argmax output".into()))?;
        let ids = self
            .backend
            .read_node(loaded.exe, &loaded.step.graph, node)?
            .into_i32()?;
        Ok(ids.into_iter().map(|i| i as u32).collect())
    }
}
