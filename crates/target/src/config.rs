//! [`Gemma4Config`]: every hyper-parameter of a Gemma 4 target, read from GGUF metadata
//! (arch `gemma4`) and checked for consistency. Nothing the file states is hard-coded.

use gguf::{GgufFile, MetaValue};

use crate::error::{Error, Result};

/// Mixture-of-experts settings (26B-A4B-style models).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Number of experts.
    pub n_expert: usize,
    /// Experts used per token.
    pub n_expert_used: usize,
    /// Hidden width of one expert.
    pub n_ff_expert: usize,
}

/// The hyper-parameters of a Gemma 4 target.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma4Config {
    /// Number of layers.
    pub n_layer: usize,
    /// Hidden width `H`.
    pub n_embd: usize,
    /// Vocabulary size (rows of `token_embd`).
    pub n_vocab: usize,
    /// Longest context the model was trained for.
    pub n_ctx_train: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads, per layer.
    pub n_head_kv: Vec<usize>,
    /// Head dimension of full-attention layers.
    pub head_dim_full: usize,
    /// Head dimension of sliding-window layers.
    pub head_dim_swa: usize,
    /// Feed-forward width, per layer.
    pub n_ff: Vec<usize>,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Sliding window length (positions, including the query's own).
    pub sliding_window: usize,
    /// Whether each layer is sliding-window (else full attention).
    pub is_sliding: Vec<bool>,
    /// The last this many layers reuse the K/V of an earlier layer.
    pub n_kv_shared: usize,
    /// RoPE base of full layers.
    pub rope_theta_full: f32,
    /// RoPE base of sliding layers.
    pub rope_theta_swa: f32,
    /// Dimensions rotated on full layers.
    pub n_rot_full: usize,
    /// Dimensions rotated on sliding layers.
    pub n_rot_swa: usize,
    /// Final logit soft-capping (`None` when absent or 0).
    pub final_logit_softcap: Option<f32>,
    /// Width of per-layer embeddings (0: none).
    pub n_embd_per_layer: usize,
    /// Mixture-of-experts settings, for MoE models.
    pub moe: Option<MoeConfig>,
}

/// The architecture name this crate runs.
pub const ARCH: &str = "gemma4";

impl Gemma4Config {
    /// Reads and checks the config of `file`.
    pub fn from_gguf(file: &GgufFile) -> Result<Gemma4Config> {
        let name = file_name(file);
        let bad = |reason: String| Error::Config {
            file: name.clone(),
            reason,
        };
        let arch = file.architecture()?;
        if arch != ARCH {
            return Err(bad(format!(
                "architecture is '{arch}', expected '{ARCH}' (a Gemma 4 target)"
            )));
        }
        let key = |k: &str| format!("{ARCH}.{k}");
        let req = |k: &str| -> Result<usize> { Ok(file.get_as::<usize>(&key(k))?) };
        let opt = |k: &str| -> Result<Option<usize>> { Ok(file.get_opt::<usize>(&key(k))?) };
        let f32_or = |k: &str, default: f32| -> Result<f32> {
            Ok(file.get_opt::<f32>(&key(k))?.unwrap_or(default))
        };

        let n_layer = req("block_count")?;
        if n_layer == 0 {
            return Err(bad(format!("{} is 0", key("block_count"))));
        }
        let n_embd = req("embedding_length")?;
        let embd = file.require_tensor("token_embd.weight")?;
        if embd.shape().len() != 2 || embd.shape()[0] as usize != n_embd {
            return Err(bad(format!(
                "token_embd.weight has shape {:?}, expected [{n_embd}, n_vocab]",
                embd.shape()
            )));
        }
        let n_vocab = embd.shape()[1] as usize;
        let head_dim_full = req("attention.key_length")?;
        let head_dim_swa = opt("attention.key_length_swa")?.unwrap_or(head_dim_full);
        for (k, v, want) in [
            (
                "attention.value_length",
                opt("attention.value_length")?,
                head_dim_full,
            ),
            (
                "attention.value_length_swa",
                opt("attention.value_length_swa")?,
                head_dim_swa,
            ),
        ] {
            if v.is_some_and(|v| v != want) {
                return Err(bad(format!(
                    "{} = {} differs from the key length {want}",
                    key(k),
                    v.unwrap_or(0)
                )));
            }
        }
        let is_sliding = sliding_pattern(file, &key("attention.sliding_window_pattern"), n_layer)
            .map_err(&bad)?;
        let n_kv_shared = opt("attention.shared_kv_layers")?.unwrap_or(0);
        if n_kv_shared >= n_layer {
            return Err(bad(format!(
                "{} = {n_kv_shared} leaves no layer owning K/V",
                key("attention.shared_kv_layers")
            )));
        }
        let moe = match opt("expert_count")? {
            Some(n_expert) if n_expert > 0 => Some(MoeConfig {
                n_expert,
                n_expert_used: req("expert_used_count")?,
                n_ff_expert: req("expert_feed_forward_length")?,
            }),
            _ => None,
        };
        if let Some(m) = &moe {
            if m.n_expert_used == 0 || m.n_expert_used > m.n_expert {
                return Err(bad(format!(
                    "expert_used_count {} must be in 1..={}",
                    m.n_expert_used, m.n_expert
                )));
            }
        }
        let softcap = f32_or("final_logit_softcapping", 0.0)?;
        let config = Gemma4Config {
            n_layer,
            n_embd,
            n_vocab,
            n_ctx_train: req("context_length")?,
            n_head: req("attention.head_count")?,
            n_head_kv: per_layer(file, &key("attention.head_count_kv"), n_layer).map_err(&bad)?,
            head_dim_full,
            head_dim_swa,
            n_ff: per_layer(file, &key("feed_forward_length"), n_layer).map_err(&bad)?,
            eps: f32_or("attention.layer_norm_rms_epsilon", 1e-6)?,
            sliding_window: req("attention.sliding_window")?,
            is_sliding,
            n_kv_shared,
            rope_theta_full: f32_or("rope.freq_base", 1e6)?,
            rope_theta_swa: f32_or("rope.freq_base_swa", 1e4)?,
            n_rot_full: opt("rope.dimension_count")?.unwrap_or(head_dim_full),
            n_rot_swa: opt("rope.dimension_count_swa")?.unwrap_or(head_dim_swa),
            final_logit_softcap: (softcap > 0.0).then_some(softcap),
            n_embd_per_layer: opt("embedding_length_per_layer_input")?.unwrap_or(0),
            moe,
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.n_head == 0 || self.sliding_window == 0 {
            return Err("head_count and sliding_window must be positive".into());
        }
        for l in 0..self.n_layer {
            let kv = self.n_head_kv[l];
            if kv == 0 || !self.n_head.is_multiple_of(kv) {
                return Err(format!(
                    "layer {l}: {} query heads do not divide into {kv} kv heads",
                    self.n_head
                ));
            }
        }
        for (name, n_rot, dim) in [
            ("rope.dimension_count", self.n_rot_full, self.head_dim_full),
            (
                "rope.dimension_count_swa",
                self.n_rot_swa,
                self.head_dim_swa,
            ),
        ] {
            if n_rot == 0 || n_rot % 2 != 0 || n_rot > dim {
                return Err(format!(
                    "{ARCH}.{name} = {n_rot} must be even and at most the head dimension {dim}"
                ));
            }
        }
        if self
            .kv_source_layers()
            .iter()
            .enumerate()
            .any(|(l, &s)| s > l)
        {
            return Err(
                "a KV-shared layer has no earlier layer of its attention type to reuse".into(),
            );
        }
        Ok(())
    }

    /// Head dimension of layer `l`.
    pub fn head_dim(&self, l: usize) -> usize {
        if self.is_sliding[l] {
            self.head_dim_swa
        } else {
            self.head_dim_full
        }
    }

    /// First layer that reuses another layer's K/V.
    pub fn first_kv_shared(&self) -> usize {
        self.n_layer - self.n_kv_shared
    }

    /// For each layer, the layer whose K/V it attends to: itself for owners; for KV-shared
    /// layers the last non-shared layer of the same attention type (transformers' rule).
    pub fn kv_source_layers(&self) -> Vec<usize> {
        let first_shared = self.first_kv_shared();
        (0..self.n_layer)
            .map(|l| {
                if l < first_shared {
                    return l;
                }
                (0..first_shared)
                    .rev()
                    .find(|&s| self.is_sliding[s] == self.is_sliding[l])
                    .unwrap_or(usize::MAX)
            })
            .collect()
    }
}

/// The file's name for messages.
pub(crate) fn file_name(file: &GgufFile) -> String {
    file.path()
        .map_or_else(|| "<memory>".to_string(), |p| p.display().to_string())
}

/// A per-layer integer: a scalar applies to all layers, an array gives one per layer.
fn per_layer(
    file: &GgufFile,
    key: &str,
    n_layer: usize,
) -> std::result::Result<Vec<usize>, String> {
    match file.get(key) {
        None => Err(format!("metadata key '{key}' is missing")),
        Some(MetaValue::Array(a)) => {
            if a.len() != n_layer {
                return Err(format!(
                    "{key} has {} entries for {n_layer} layers",
                    a.len()
                ));
            }
            a.iter()
                .map(|v| {
                    v.as_u64()
                        .map(|v| v as usize)
                        .ok_or_else(|| format!("{key} holds a non-integer or negative entry"))
                })
                .collect()
        }
        Some(v) => v
            .as_u64()
            .map(|v| vec![v as usize; n_layer])
            .ok_or_else(|| {
                format!(
                    "{key}: expected an integer or an array of integers, found {}",
                    v.type_description()
                )
            }),
    }
}

/// Which layers use sliding-window attention: a bool array (true = sliding), or an integer
/// period `n` (every `n`-th layer is full).
fn sliding_pattern(
    file: &GgufFile,
    key: &str,
    n_layer: usize,
) -> std::result::Result<Vec<bool>, String> {
    match file.get(key) {
        None => Err(format!("metadata key '{key}' is missing")),
        Some(MetaValue::Array(a)) => {
            let v: Vec<bool> = a.to_vec().ok_or_else(|| {
                format!(
                    "{key}: expected an array of bool, found array of {}",
                    a.elem_type()
                )
            })?;
            if v.len() != n_layer {
                return Err(format!(
                    "{key} has {} entries for {n_layer} layers",
                    v.len()
                ));
            }
            Ok(v)
        }
        Some(v) => match v.as_u64() {
            Some(period) if period > 0 => Ok((0..n_layer)
                .map(|l| (l + 1) % period as usize != 0)
                .collect()),
            _ => Err(format!(
                "{key}: expected a bool array or a positive period, found {}",
                v.type_description()
            )),
        },
    }
}
