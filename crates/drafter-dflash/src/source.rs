//! Where the drafter's tensors and hyper-parameters come from: a GGUF as llama.cpp's converter
//! writes it (arch `dflash`), as lucebox names it (arch `gemma4-dflash-draft`), or a z-lab
//! safetensors checkpoint folder (`config.json` + `model.safetensors`). All three are mapped to
//! llama.cpp's tensor names.

use std::path::Path;
use std::sync::Arc;

use gguf::{GgmlType, GgufFile, MetaValue};
use graph::HostBytes;

/// One tensor: type, shape (ggml order) and bytes.
#[derive(Clone, Debug)]
pub struct RawTensor {
    /// Element type.
    pub dtype: GgmlType,
    /// Shape, ggml order.
    pub shape: Vec<usize>,
    /// The bytes.
    pub bytes: HostBytes,
}

/// Hyper-parameters as the file states them (sizes are re-derived from tensor shapes later).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Declared {
    /// Number of layers.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: Option<usize>,
    /// Key/value heads.
    pub n_head_kv: Option<usize>,
    /// Head dimension.
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Trained block size.
    pub block_size: usize,
    /// Scale of the block's token embeddings.
    pub embedding_scale: f32,
    /// Soft-capping of the logits.
    pub softcap: Option<f32>,
    /// Target layer ids whose outputs form the context features (0-based).
    pub target_layers: Vec<usize>,
    /// The mask token.
    pub mask_token: Option<u32>,
    /// Per layer: sliding-window (causal) or full (bidirectional).
    pub is_sliding: Vec<bool>,
    /// Sliding window length.
    pub sliding_window: usize,
    /// Vocabulary size the drafter was trained for, where the file states it.
    pub n_vocab: Option<usize>,
}

/// A loaded drafter file.
pub struct Source {
    /// Where it came from, for messages.
    pub name: String,
    /// Declared hyper-parameters.
    pub declared: Declared,
    /// Tensors by llama.cpp name.
    pub tensors: std::collections::HashMap<String, RawTensor>,
}

fn bad(name: &str, reason: impl Into<String>) -> String {
    format!("{name}: {}", reason.into())
}

fn u(v: Option<MetaValue<'_>>) -> Option<usize> {
    v.and_then(|v| v.as_u64()).map(|x| x as usize)
}

fn ints(v: Option<MetaValue<'_>>) -> Option<Vec<i64>> {
    match v {
        Some(MetaValue::Array(a)) => a
            .iter()
            .map(|x| match x {
                MetaValue::I32(v) => Some(i64::from(v)),
                MetaValue::U32(v) => Some(i64::from(v)),
                MetaValue::I64(v) => Some(v),
                MetaValue::U64(v) => i64::try_from(v).ok(),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

impl Source {
    /// Opens a GGUF file or a checkpoint folder.
    pub fn open(path: &Path) -> Result<Source, String> {
        if path.is_dir() {
            Self::from_safetensors_dir(path)
        } else {
            let file = GgufFile::open(path).map_err(|e| e.to_string())?;
            Self::from_gguf(Arc::new(file))
        }
    }

    /// Reads a GGUF drafter (llama.cpp's `dflash` or lucebox's `gemma4-dflash-draft`).
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Source, String> {
        let name = file
            .path()
            .map_or_else(|| "<memory>".into(), |p| p.display().to_string());
        let arch = file.architecture().map_err(|e| e.to_string())?.to_string();
        let (prefix, ids_plus_one, rename): (&str, bool, fn(&str) -> String) = match arch.as_str() {
            "dflash" => ("dflash", true, |n| n.to_string()),
            "gemma4-dflash-draft" | "dflash-draft" => (
                if arch == "dflash-draft" { "dflash-draft" } else { "gemma4-dflash-draft" },
                false,
                |n| match n {
                    "dflash.fc.weight" => "fc.weight".into(),
                    "dflash.hidden_norm.weight" => "enc.output_norm.weight".into(),
                    other => other.into(),
                },
            ),
            other => return Err(bad(&name, format!("architecture is '{other}': not a DFlash drafter (expected 'dflash' or 'gemma4-dflash-draft')"))),
        };
        let k = |s: &str| format!("{prefix}.{s}");
        let f = |s: &str, d: f32| {
            file.get(&k(s))
                .and_then(|v| v.as_f64())
                .map_or(d, |v| v as f32)
        };
        let mut declared = Declared {
            n_layer: u(file.get(&k("block_count"))).ok_or_else(|| {
                bad(
                    &name,
                    format!("metadata key '{}' is missing", k("block_count")),
                )
            })?,
            n_head: u(file.get(&k("attention.head_count"))),
            n_head_kv: u(file.get(&k("attention.head_count_kv"))),
            head_dim: u(file.get(&k("attention.key_length"))),
            eps: f("attention.layer_norm_rms_epsilon", 1e-6),
            rope_theta: f("rope.freq_base", 1e6),
            block_size: u(file.get(&k("block_size")))
                .or(u(file.get("dflash.block_size")))
                .unwrap_or(16),
            embedding_scale: file
                .get(&k("embedding_scale"))
                .and_then(|v| v.as_f64())
                .map_or(1.0, |v| v as f32),
            softcap: Some(f("final_logit_softcapping", 0.0)).filter(|&c| c > 0.0),
            target_layers: Vec::new(),
            mask_token: u(file.get("tokenizer.ggml.mask_token_id"))
                .or(u(file.get(&k("dflash.mask_token_id"))))
                .map(|v| v as u32),
            is_sliding: Vec::new(),
            sliding_window: u(file.get(&k("attention.sliding_window"))).unwrap_or(0),
            n_vocab: match file.get("tokenizer.ggml.tokens") {
                Some(MetaValue::Array(a)) => Some(a.len()),
                _ => None,
            },
        };
        let layers = ints(file.get(&k("target_layers")))
            .or_else(|| ints(file.get(&k("dflash.target_layer_ids"))))
            .ok_or_else(|| {
                bad(
                    &name,
                    format!("metadata key '{}' is missing", k("target_layers")),
                )
            })?;
        declared.target_layers = layers
            .iter()
            .map(|&v| {
                let id = if ids_plus_one { v - 1 } else { v };
                usize::try_from(id)
                    .map_err(|_| bad(&name, format!("target layer id {id} is negative")))
            })
            .collect::<Result<_, _>>()?;
        declared.is_sliding = match file.get(&k("attention.sliding_window_pattern")) {
            Some(MetaValue::Array(a)) => a.to_vec::<bool>().unwrap_or_default(),
            _ => vec![false; declared.n_layer],
        };
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = file.clone();
        let mut tensors = std::collections::HashMap::new();
        for info in file.tensors() {
            let bytes = HostBytes::shared(
                owner.clone(),
                info.file_offset() as usize,
                info.n_bytes() as usize,
            )
            .map_err(|e| e.to_string())?;
            tensors.insert(
                rename(info.name()),
                RawTensor {
                    dtype: info.ggml_type(),
                    shape: info.shape().iter().map(|&d| d as usize).collect(),
                    bytes,
                },
            );
        }
        Ok(Source {
            name,
            declared,
            tensors,
        })
    }

    /// Reads a z-lab checkpoint folder: `config.json` (with `dflash_config`) and
    /// `model.safetensors` (read into memory).
    pub fn from_safetensors_dir(dir: &Path) -> Result<Source, String> {
        let name = dir.display().to_string();
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| bad(&cfg_path.display().to_string(), e.to_string()))?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad(&cfg_path.display().to_string(), e.to_string()))?;
        let dc = &cfg["dflash_config"];
        if !dc.is_object() {
            return Err(bad(
                &cfg_path.display().to_string(),
                "no dflash_config: not a DFlash checkpoint",
            ));
        }
        let n = |v: &serde_json::Value| v.as_u64().map(|x| x as usize);
        let n_layer = n(&cfg["num_hidden_layers"])
            .ok_or_else(|| bad(&name, "config.json lacks num_hidden_layers"))?;
        let is_sliding = match cfg["layer_types"].as_array() {
            Some(types) => types.iter().map(|t| t == "sliding_attention").collect(),
            None => vec![false; n_layer],
        };
        let declared = Declared {
            n_layer,
            n_head: n(&cfg["num_attention_heads"]),
            n_head_kv: n(&cfg["num_key_value_heads"]),
            head_dim: n(&cfg["head_dim"]),
            eps: cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
            rope_theta: cfg["rope_theta"].as_f64().unwrap_or(1e6) as f32,
            block_size: n(&dc["block_size"]).or(n(&cfg["block_size"])).unwrap_or(16),
            embedding_scale: dc["input_embedding_scale"].as_f64().unwrap_or(1.0) as f32,
            softcap: dc["final_logit_softcapping"]
                .as_f64()
                .map(|v| v as f32)
                .filter(|&c| c > 0.0),
            target_layers: dc["target_layer_ids"]
                .as_array()
                .ok_or_else(|| bad(&name, "dflash_config lacks target_layer_ids"))?
                .iter()
                .map(|v| {
                    n(v).ok_or_else(|| {
                        bad(&name, "a target layer id is not a non-negative integer")
                    })
                })
                .collect::<Result<_, _>>()?,
            mask_token: n(&dc["mask_token_id"]).map(|v| v as u32),
            is_sliding,
            sliding_window: n(&cfg["sliding_window"]).unwrap_or(0),
            n_vocab: n(&cfg["vocab_size"]),
        };
        let st_path = dir.join("model.safetensors");
        let bytes = Arc::new(
            std::fs::read(&st_path)
                .map_err(|e| bad(&st_path.display().to_string(), e.to_string()))?,
        );
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(&st_path.display().to_string(), e.to_string()))?;
        let base = bytes.as_ptr() as usize;
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = bytes.clone();
        let mut tensors = std::collections::HashMap::new();
        for (tname, view) in st.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => GgmlType::F32,
                safetensors::Dtype::F16 => GgmlType::F16,
                safetensors::Dtype::BF16 => GgmlType::BF16,
                other => {
                    return Err(bad(
                        &st_path.display().to_string(),
                        format!("tensor '{tname}' has unsupported dtype {other:?}"),
                    ))
                }
            };
            // torch [out, in] row-major is ggml [in, out].
            let shape: Vec<usize> = view.shape().iter().rev().copied().collect();
            let start = view.data().as_ptr() as usize - base;
            let hb = HostBytes::shared(owner.clone(), start, view.data().len())
                .map_err(|e| e.to_string())?;
            tensors.insert(
                canonical(&tname),
                RawTensor {
                    dtype,
                    shape,
                    bytes: hb,
                },
            );
        }
        Ok(Source {
            name,
            declared,
            tensors,
        })
    }
}

/// llama.cpp's name for a z-lab checkpoint tensor.
fn canonical(name: &str) -> String {
    match name {
        "fc.weight" => return "fc.weight".into(),
        "hidden_norm.weight" => return "enc.output_norm.weight".into(),
        "norm.weight" => return "output_norm.weight".into(),
        _ => {}
    }
    let Some(rest) = name.strip_prefix("layers.") else {
        return name.into();
    };
    let (idx, part) = rest.split_once('.').unwrap_or((rest, ""));
    let mapped = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => return format!("blk.{idx}.{other}"),
    };
    format!("blk.{idx}.{mapped}")
}
