//! The assistant's hyper-parameters from GGUF metadata, in llama.cpp's layout (arch
//! `gemma4-assistant`, `nextn.*` tensors) or lucebox's (arch `gemma4_assistant`, `mtp.*`).

use gguf::{GgufFile, MetaValue};
use target::Gemma4Config;

use crate::Error;

/// Which naming the file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// llama.cpp's converter: arch `gemma4-assistant`, tensors `nextn.pre_projection` etc.
    LlamaCpp,
    /// The lucebox runtime: arch `gemma4_assistant`, tensors `mtp.pre_projection` etc.
    Lucebox,
}

impl Layout {
    /// The tensor name of a projection (`"pre_projection"`, `"post_projection"`).
    pub fn projection(self, which: &str) -> String {
        match self {
            Layout::LlamaCpp => format!("nextn.{which}.weight"),
            Layout::Lucebox => format!("mtp.{which}.weight"),
        }
    }
}

/// The assistant's hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct AssistantConfig {
    /// Tensor naming.
    pub layout: Layout,
    /// Number of (query-only) layers.
    pub n_layer: usize,
    /// Assistant width.
    pub n_embd: usize,
    /// The target's width it was trained against.
    pub n_backbone: usize,
    /// Query heads.
    pub n_head: usize,
    /// Head dimension of full-attention layers.
    pub head_dim_full: usize,
    /// Head dimension of sliding layers.
    pub head_dim_swa: usize,
    /// Whether each layer is sliding-window.
    pub is_sliding: Vec<bool>,
    /// Feed-forward width per layer.
    pub n_ff: Vec<usize>,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE base of full layers.
    pub rope_theta_full: f32,
    /// RoPE base of sliding layers.
    pub rope_theta_swa: f32,
    /// Dimensions rotated on full layers.
    pub n_rot_full: usize,
    /// Dimensions rotated on sliding layers.
    pub n_rot_swa: usize,
    /// Vocabulary (rows of the assistant's own tied head).
    pub n_vocab: usize,
    /// Soft-capping of the assistant's logits (`None` when absent or 0).
    pub final_logit_softcap: Option<f32>,
    /// The centroid ("ordered embeddings") head, when the file has one.
    pub centroids: Option<CentroidHead>,
}

/// The centroid head of E2B/E4B-style assistants: the top `top_k` of `n_centroids` centroid
/// scores select `top_k · vocab / n_centroids` candidate tokens (through `token_ordering`); only
/// they keep their logits, every other token gets the smallest selected logit minus one.
#[derive(Clone, Debug, PartialEq)]
pub struct CentroidHead {
    /// Tensor name of the centroid matrix `[n_embd, n_centroids]`.
    pub centroids: String,
    /// Tensor name of the token ordering `[vocab]` (I32).
    pub ordering: String,
    /// Number of centroids.
    pub n_centroids: usize,
    /// Centroids kept per token.
    pub top_k: usize,
}

fn name(file: &GgufFile) -> String {
    file.path()
        .map_or_else(|| "<memory>".into(), |p| p.display().to_string())
}

impl AssistantConfig {
    /// Reads the config; a file that is not an assistant is a clear error.
    pub fn from_gguf(file: &GgufFile) -> Result<AssistantConfig, Error> {
        let bad = |reason: String| Error::Config {
            file: name(file),
            reason,
        };
        let arch = file.architecture()?;
        let (layout, prefix) = match arch {
            "gemma4-assistant" => (Layout::LlamaCpp, "gemma4-assistant"),
            "gemma4_assistant" => (Layout::Lucebox, "gemma4_assistant"),
            other => {
                return Err(bad(format!(
                    "architecture is '{other}': not a Gemma 4 MTP assistant (expected 'gemma4-assistant' or 'gemma4_assistant')"
                )))
            }
        };
        let key = |k: &str| format!("{prefix}.{k}");
        let req = |k: &str| -> Result<usize, Error> { Ok(file.get_as::<usize>(&key(k))?) };
        let opt = |k: &str| -> Result<Option<usize>, Error> { Ok(file.get_opt::<usize>(&key(k))?) };
        let f32_or = |k: &str, d: f32| -> Result<f32, Error> {
            Ok(file.get_opt::<f32>(&key(k))?.unwrap_or(d))
        };
        let n_layer = req("block_count")?;
        let n_embd = req("embedding_length")?;
        let post = file.require_tensor(&layout.projection("post_projection"))?;
        // The backbone width from metadata, else from the post-projection's output size.
        let from_shape = post.shape().get(1).copied().unwrap_or(0) as usize;
        let n_backbone = opt("embedding_length_out")?
            .or(opt("n_embd_backbone")?)
            .unwrap_or(from_shape);
        if n_backbone != from_shape {
            return Err(bad(format!(
                "backbone width {n_backbone} disagrees with {} {:?}",
                post.name(),
                post.shape()
            )));
        }
        let head_dim_full = req("attention.key_length")?;
        let head_dim_swa = opt("attention.key_length_swa")?.unwrap_or(head_dim_full);
        let is_sliding = match file.get(&key("attention.sliding_window_pattern")) {
            Some(MetaValue::Array(a)) => a
                .to_vec::<bool>()
                .ok_or_else(|| bad("sliding_window_pattern is not a bool array".into()))?,
            _ => {
                return Err(bad(format!(
                    "metadata key '{}' is missing",
                    key("attention.sliding_window_pattern")
                )))
            }
        };
        if is_sliding.len() != n_layer {
            return Err(bad(format!(
                "sliding_window_pattern has {} entries for {n_layer} layers",
                is_sliding.len()
            )));
        }
        let n_ff = match file.get(&key("feed_forward_length")) {
            Some(MetaValue::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|x| x as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("feed_forward_length has a bad entry".into()))?,
            Some(v) => vec![
                v.as_u64()
                    .ok_or_else(|| bad("feed_forward_length is not an integer".into()))?
                    as usize;
                n_layer
            ],
            None => {
                return Err(bad(format!(
                    "metadata key '{}' is missing",
                    key("feed_forward_length")
                )))
            }
        };
        let embd = file.require_tensor("token_embd.weight")?;
        let n_vocab = embd.shape().get(1).copied().unwrap_or(0) as usize;
        let centroids = centroid_head(file, layout, prefix, n_embd, n_vocab).map_err(&bad)?;
        Ok(AssistantConfig {
            layout,
            n_layer,
            n_embd,
            n_backbone,
            n_head: req("attention.head_count")?,
            head_dim_full,
            head_dim_swa,
            is_sliding,
            n_ff,
            eps: f32_or("attention.layer_norm_rms_epsilon", 1e-6)?,
            rope_theta_full: f32_or("rope.freq_base", 1e6)?,
            rope_theta_swa: f32_or("rope.freq_base_swa", 1e4)?,
            n_rot_full: opt("rope.dimension_count")?.unwrap_or(head_dim_full),
            n_rot_swa: opt("rope.dimension_count_swa")?.unwrap_or(head_dim_swa),
            n_vocab,
            // transformers' assistant head has no soft-cap (the key in the file is the target's).
            final_logit_softcap: None,
            centroids,
        })
    }

    /// Head dimension of layer `l`.
    pub fn head_dim(&self, l: usize) -> usize {
        if self.is_sliding[l] {
            self.head_dim_swa
        } else {
            self.head_dim_full
        }
    }
}

/// The centroid head's tensors and sizes, if the file has them (lucebox: `mtp.centroids`,
/// `mtp.token_ordering`; llama.cpp forks: `masked_embd_centroids`, `masked_embd_ordering`).
fn centroid_head(
    file: &GgufFile,
    layout: Layout,
    prefix: &str,
    n_embd: usize,
    n_vocab: usize,
) -> Result<Option<CentroidHead>, String> {
    let names = match layout {
        Layout::Lucebox => ("mtp.centroids.weight", "mtp.token_ordering.weight"),
        Layout::LlamaCpp => (
            "masked_embd_centroids.weight",
            "masked_embd_ordering.weight",
        ),
    };
    let (Some(c), Some(o)) = (file.tensor(names.0), file.tensor(names.1)) else {
        return Ok(None);
    };
    let n_centroids = c.shape().get(1).copied().unwrap_or(0) as usize;
    if c.shape().first().copied() != Some(n_embd as u64)
        || n_centroids == 0
        || !n_vocab.is_multiple_of(n_centroids)
    {
        return Err(format!(
            "{} has shape {:?}: expected [{n_embd}, n] with n dividing the vocabulary {n_vocab}",
            names.0,
            c.shape()
        ));
    }
    if o.n_elems() != n_vocab as u64 || o.ggml_type() != gguf::GgmlType::I32 {
        return Err(format!("{} must hold {n_vocab} I32 token ids", names.1));
    }
    let top_k = [
        format!("{prefix}.centroid_top_k"),
        format!("{prefix}.centroid_intermediate_top_k"),
    ]
    .iter()
    .find_map(|k| file.get(k).and_then(|v| v.as_u64()))
    .unwrap_or(32) as usize;
    Ok(Some(CentroidHead {
        centroids: names.0.into(),
        ordering: names.1.into(),
        n_centroids,
        top_k: top_k.clamp(1, n_centroids),
    }))
}

/// For each assistant layer, the target layer whose K/V it reads: the last target layer of the
/// same attention type, followed to the layer that owns its K/V if it is KV-shared.
pub fn donor_layers(
    assistant_sliding: &[bool],
    target: &Gemma4Config,
) -> Result<Vec<usize>, String> {
    let source = target.kv_source_layers();
    assistant_sliding
        .iter()
        .map(|&sliding| {
            let last = (0..target.n_layer)
                .rev()
                .find(|&l| target.is_sliding[l] == sliding)
                .ok_or_else(|| {
                    format!(
                        "the target has no {} layer",
                        if sliding {
                            "sliding-window"
                        } else {
                            "full-attention"
                        }
                    )
                })?;
            // A KV-shared layer reads an earlier owner of its type; none means no donor.
            source
                .get(last)
                .copied()
                .filter(|&owner| owner < target.n_layer)
                .ok_or_else(|| {
                    format!(
                        "target layer {last} shares K/V but no earlier layer of its type owns any"
                    )
                })
        })
        .collect()
}
