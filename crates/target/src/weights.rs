//! Binding a Gemma 4 GGUF's tensors by llama.cpp's names: which are required, which optional,
//! the shape each must have, and uploading them to a backend once.

use std::collections::HashMap;
use std::sync::Arc;

use gguf::GgufFile;
use graph::{Backend, BufferId, DType, HostBytes, Shape};

use crate::config::{file_name, Gemma4Config};
use crate::error::{Error, Result};

/// One uploaded weight.
#[derive(Clone, Copy, Debug)]
pub struct WeightRef {
    /// The backend buffer.
    pub buffer: BufferId,
    /// Its ggml type.
    pub dtype: DType,
    /// Its shape (ggml order).
    pub shape: Shape,
}

/// A tensor the model uses: its name, the shape it must have, and whether it must exist.
#[derive(Clone, Debug)]
pub struct Expected {
    /// GGUF tensor name.
    pub name: String,
    /// Required shape (ggml order).
    pub shape: Vec<usize>,
    /// Whether the model fails to load without it.
    pub required: bool,
}

fn req(name: String, shape: &[usize]) -> Expected {
    Expected {
        name,
        shape: shape.to_vec(),
        required: true,
    }
}

fn opt(name: String, shape: &[usize]) -> Expected {
    Expected {
        name,
        shape: shape.to_vec(),
        required: false,
    }
}

/// Every tensor a model with `config` uses.
pub fn expected_tensors(config: &Gemma4Config) -> Vec<Expected> {
    let c = config;
    let h = c.n_embd;
    let mut out = vec![
        req("token_embd.weight".into(), &[h, c.n_vocab]),
        req("output_norm.weight".into(), &[h]),
        opt("output.weight".into(), &[h, c.n_vocab]),
        opt("rope_freqs.weight".into(), &[c.n_rot_full / 2]),
    ];
    let d = c.n_embd_per_layer;
    if d > 0 {
        out.push(req(
            "per_layer_token_embd.weight".into(),
            &[c.n_layer * d, c.n_vocab],
        ));
        out.push(req(
            "per_layer_model_proj.weight".into(),
            &[h, c.n_layer * d],
        ));
        out.push(req("per_layer_proj_norm.weight".into(), &[d]));
    }
    let first_shared = c.first_kv_shared();
    for l in 0..c.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        let hd = c.head_dim(l);
        let q = c.n_head * hd;
        let kv = c.n_head_kv[l] * hd;
        let ff = c.n_ff[l];
        out.extend([
            req(b("attn_norm.weight"), &[h]),
            req(b("attn_q.weight"), &[h, q]),
            req(b("attn_q_norm.weight"), &[hd]),
            req(b("attn_output.weight"), &[q, h]),
            req(b("post_attention_norm.weight"), &[h]),
            req(b("ffn_norm.weight"), &[h]),
            req(b("ffn_gate.weight"), &[h, ff]),
            req(b("ffn_up.weight"), &[h, ff]),
            req(b("ffn_down.weight"), &[ff, h]),
            req(b("post_ffw_norm.weight"), &[h]),
            opt(b("layer_output_scale.weight"), &[1]),
        ]);
        if l < first_shared {
            out.push(req(b("attn_k.weight"), &[h, kv]));
            out.push(req(b("attn_k_norm.weight"), &[hd]));
            // K=V layers (full attention, attention_k_eq_v) have no attn_v.
            let v = b("attn_v.weight");
            out.push(if c.is_sliding[l] {
                req(v, &[h, kv])
            } else {
                opt(v, &[h, kv])
            });
        }
        if let Some(m) = &c.moe {
            let (e, i) = (m.n_expert, m.n_ff_expert);
            out.extend([
                req(b("ffn_gate_inp.weight"), &[h, e]),
                req(b("ffn_gate_inp.scale"), &[h]),
                opt(b("ffn_gate_up_exps.weight"), &[h, 2 * i, e]),
                opt(b("ffn_gate_exps.weight"), &[h, i, e]),
                opt(b("ffn_up_exps.weight"), &[h, i, e]),
                req(b("ffn_down_exps.weight"), &[i, h, e]),
                req(b("ffn_down_exps.scale"), &[e]),
                req(b("pre_ffw_norm_2.weight"), &[h]),
                req(b("post_ffw_norm_1.weight"), &[h]),
                req(b("post_ffw_norm_2.weight"), &[h]),
            ]);
        }
        if d > 0 {
            out.extend([
                req(b("inp_gate.weight"), &[h, d]),
                req(b("proj.weight"), &[d, h]),
                req(b("post_norm.weight"), &[h]),
            ]);
        }
    }
    out
}

/// What the device-memory check before uploading needs to know besides the weights.
#[derive(Clone, Copy, Debug)]
pub struct MemoryPlanInput {
    /// Positions of the KV cache.
    pub n_ctx: usize,
    /// Largest batch.
    pub max_batch: usize,
    /// KV cache element type.
    pub kv_dtype: DType,
}

/// The model's weights, uploaded to a backend.
#[derive(Debug, Default)]
pub struct Weights {
    map: HashMap<String, WeightRef>,
}

impl Weights {
    /// Checks every expected tensor (presence and shape), checks that weights, cache and a
    /// workspace allowance fit the device's free memory (for backends that report it), and
    /// uploads the tensors present.
    /// `progress(done_bytes, total_bytes)` is called after each tensor.
    pub fn load(
        file: &Arc<GgufFile>,
        config: &Gemma4Config,
        plan: &MemoryPlanInput,
        backend: &mut dyn Backend,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Weights> {
        let name = file_name(file);
        let expected = expected_tensors(config);
        let mut present = Vec::new();
        for e in &expected {
            match file.tensor(&e.name) {
                None if e.required => {
                    return Err(Error::Tensor {
                        file: name,
                        tensor: e.name.clone(),
                        reason: "required tensor is missing".into(),
                    })
                }
                None => {}
                Some(info) => {
                    let shape: Vec<usize> = info.shape().iter().map(|&d| d as usize).collect();
                    if shape != e.shape {
                        return Err(Error::Tensor {
                            file: name,
                            tensor: e.name.clone(),
                            reason: format!("shape {shape:?}, expected {:?}", e.shape),
                        });
                    }
                    present.push(info.clone());
                }
            }
        }
        for l in 0..config.n_layer {
            if config.moe.is_some() {
                let has = |s: &str| file.tensor(&format!("blk.{l}.{s}")).is_some();
                if !(has("ffn_gate_up_exps.weight")
                    || (has("ffn_gate_exps.weight") && has("ffn_up_exps.weight")))
                {
                    return Err(Error::Tensor {
                        file: name,
                        tensor: format!("blk.{l}.ffn_gate_up_exps.weight"),
                        reason: "missing (nor are ffn_gate_exps and ffn_up_exps present)".into(),
                    });
                }
            }
        }
        let total: u64 = present.iter().map(|i| i.n_bytes()).sum();
        if let Some((free, _)) = backend.memory_info() {
            let kv = crate::kv_cache::KvCache::planned_bytes(
                config,
                plan.n_ctx,
                plan.max_batch,
                plan.kv_dtype,
            );
            let needed = total + kv + activation_allowance(config, plan.max_batch);
            if needed > free {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                return Err(Error::Config {
                    file: name,
                    reason: format!(
                        "the model does not fit: needs {:.2} GiB (weights {:.2} + KV cache {:.2} + activations {:.2}), {} has {:.2} GiB free",
                        gib(needed),
                        gib(total),
                        gib(kv),
                        gib(needed - total - kv),
                        backend.name(),
                        gib(free)
                    ),
                });
            }
        }
        let mut done = 0;
        let mut map = HashMap::new();
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = file.clone();
        for info in present {
            let shape = Shape::new(&info.shape().iter().map(|&d| d as usize).collect::<Vec<_>>())?;
            let bytes = HostBytes::shared(
                owner.clone(),
                info.file_offset() as usize,
                info.n_bytes() as usize,
            )?;
            let buffer = backend
                .upload(info.ggml_type(), shape, bytes)
                .map_err(|e| Error::Tensor {
                    file: name.clone(),
                    tensor: info.name().to_string(),
                    reason: e.to_string(),
                })?;
            map.insert(
                info.name().to_string(),
                WeightRef {
                    buffer,
                    dtype: info.ggml_type(),
                    shape,
                },
            );
            done += info.n_bytes();
            progress(done, total);
        }
        Ok(Weights { map })
    }

    /// The weight called `name`, if the file has it.
    pub fn get(&self, name: &str) -> Option<&WeightRef> {
        self.map.get(name)
    }

    /// Number of uploaded tensors.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing was uploaded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Bytes of activations and workspace a step of `max_batch` rows may hold beside the weights and
/// the cache: per row the FFN's gate, up and product rows, a few hidden-width rows (residual,
/// norms, split-K planes, the products' prepared halves) and a row of logits (the `logits`
/// command asks for every row's), f32 each, and an f16 copy of the widest product input (a GPU's
/// GEMM route for prefill chunks); plus a fixed workspace: 256 MB, and 288 MB more for the GEMM
/// route's f16 weight tile (at most 256 MiB) and cuBLAS's own 32 MiB.
fn activation_allowance(config: &Gemma4Config, max_batch: usize) -> u64 {
    let expert_ff = config
        .moe
        .as_ref()
        .map_or(0, |m| m.n_ff_expert * m.n_expert_used);
    let n_ff = config
        .n_ff
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(expert_ff);
    let per_row = 4 * (4 * n_ff + 8 * config.n_embd + config.n_vocab) as u64 + 2 * n_ff as u64;
    WORKSPACE_BYTES + per_row * max_batch as u64
}

/// The fixed part of [`activation_allowance`].
const WORKSPACE_BYTES: u64 = (256 << 20) + (288 << 20);

#[cfg(test)]
mod tests {
    use super::*;

    /// The allowance grows with the batch by a row's FFN, hidden and logits floats and its f16
    /// product input.
    #[test]
    fn the_activation_allowance_grows_with_the_batch() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/dense.gguf");
        let file = GgufFile::open(path).unwrap();
        let c = Gemma4Config::from_gguf(&file).unwrap();
        let n_ff = *c.n_ff.iter().max().unwrap();
        let row = 4 * (4 * n_ff + 8 * c.n_embd + c.n_vocab) as u64 + 2 * n_ff as u64;
        assert_eq!(activation_allowance(&c, 1), (544 << 20) + row);
        assert_eq!(
            activation_allowance(&c, 512) - activation_allowance(&c, 64),
            448 * row
        );
    }
}
