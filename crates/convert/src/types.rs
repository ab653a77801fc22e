//! The ggml type of each output tensor.
//!
//! - `f32`, `f16`, `bf16`, `q8_0` follow llama.cpp's converter: 1-D tensors, `*_norm.weight`,
//!   the MoE router (`ffn_gate_inp.weight`) and tensors not named `*.weight` stay F32; every
//!   other tensor takes the chosen type (Q8_0 falls back to F16 when a row is not a multiple
//!   of 32).
//! - `q4_k_m` is llama.cpp's `llama-quantize Q4_K_M` mix applied to the f32 conversion:
//!   Q4_K by default; Q6_K for the output head (and for `token_embd`/`per_layer_token_embd`
//!   when the head is tied to the embedding), for `attn_v` and for `ffn_down` of the layers
//!   `use_more_bits` picks (the first and last eighth, and every third layer in between;
//!   counted over the `attn_v` tensors that exist for `attn_v`, over layers for `ffn_down`);
//!   Q5_0 (for Q4_K) or Q8_0 (for Q6_K) where a row is not a multiple of 256, F16 where it is
//!   not a multiple of 32. Tensors llama-quantize leaves alone (1-D, norms, the router,
//!   `per_layer_model_proj`) stay F32.

use std::fmt;
use std::str::FromStr;

use gguf::GgmlType;

use crate::plan::{Plan, PlannedTensor};

/// The `--type` of a conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    /// Every tensor in f32.
    F32,
    /// Matrices in f16.
    F16,
    /// Matrices in bf16.
    Bf16,
    /// Matrices in Q8_0.
    Q8_0,
    /// llama.cpp's Q4_K_M mix of Q4_K, Q6_K (and Q5_0/Q8_0 fallbacks).
    Q4KM,
}

impl OutType {
    /// Every type, in `--help` order.
    pub const ALL: [OutType; 5] = [
        OutType::F32,
        OutType::F16,
        OutType::Bf16,
        OutType::Q8_0,
        OutType::Q4KM,
    ];

    /// The name `--type` takes (`f32`, `f16`, `bf16`, `q8_0`, `q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::F16 => "f16",
            OutType::Bf16 => "bf16",
            OutType::Q8_0 => "q8_0",
            OutType::Q4KM => "q4_k_m",
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) of a file of this type.
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q8_0 => 7,
            OutType::Q4KM => 15,
            OutType::Bf16 => 32,
        }
    }
}

impl fmt::Display for OutType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OutType {
    type Err = String;

    fn from_str(s: &str) -> Result<OutType, String> {
        OutType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = OutType::ALL.iter().map(|t| t.name()).collect();
                format!("unknown type '{s}' (expected one of {})", names.join(", "))
            })
    }
}

/// Sets the type of every tensor of `plan`.
pub(crate) fn assign_types(plan: &mut Plan, out: OutType) -> Result<(), String> {
    for t in &mut plan.tensors {
        t.ggml_type = converter_type(t, out);
    }
    if out == OutType::Q4KM {
        q4_k_m_mix(plan)?;
    }
    Ok(())
}

/// The type llama.cpp's converter writes `t` in.
fn converter_type(t: &PlannedTensor, out: OutType) -> GgmlType {
    let name = t.name.as_str();
    if t.n_dims() <= 1
        || name.ends_with("_norm.weight")
        || is_router(name)
        || !name.ends_with(".weight")
    {
        return GgmlType::F32;
    }
    match out {
        OutType::F32 | OutType::Q4KM => GgmlType::F32,
        OutType::F16 => GgmlType::F16,
        OutType::Bf16 => GgmlType::BF16,
        OutType::Q8_0 if row_len(t).is_multiple_of(32) => GgmlType::Q8_0,
        OutType::Q8_0 => GgmlType::F16,
    }
}

/// `blk.N.ffn_gate_inp.weight`, the MoE router.
fn is_router(name: &str) -> bool {
    layer_of(name).is_some_and(|l| name == format!("blk.{l}.ffn_gate_inp.weight"))
}

fn row_len(t: &PlannedTensor) -> u64 {
    t.shape.first().copied().unwrap_or(1)
}

/// The `N` of a `blk.N.` name.
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let (n, _) = rest.split_once('.')?;
    n.parse().ok()
}

/// llama-quantize's broad tensor categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnV,
    AttnK,
    AttnOutput,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight") || name.contains("attn_kv_b.weight") {
        Category::AttnQkv
    } else if name.contains("attn_v.weight") {
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// Whether llama-quantize quantizes `t` at all.
fn allows_quantization(t: &PlannedTensor) -> bool {
    let name = t.name.as_str();
    t.n_dims() >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("per_layer_model_proj")
        && !name.contains("altup")
        && !name.contains("laurel")
}

/// llama.cpp's rule for which layers of a kind get more bits.
fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

fn q4_k_m_mix(plan: &mut Plan) -> Result<(), String> {
    let tied = !plan.tensors.iter().any(|t| t.name == "output.weight");
    let n_attn_v = plan
        .tensors
        .iter()
        .filter(|t| matches!(category(&t.name), Category::AttnV | Category::AttnQkv))
        .count();
    // llama-quantize visits tensors by layer, then by name; its counters follow that order.
    let mut order: Vec<usize> = (0..plan.tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |t: &PlannedTensor| (layer_of(&t.name).map_or(-1, |l| l as i64), t.name.clone());
        key(&plan.tensors[a]).cmp(&key(&plan.tensors[b]))
    });
    let (mut i_attn_v, mut i_ffn_down) = (0usize, 0usize);
    for idx in order {
        let t = &plan.tensors[idx];
        if !allows_quantization(t) {
            continue;
        }
        let cat = category(&t.name);
        let mut ty = GgmlType::Q4_K;
        match cat {
            Category::Output => ty = head_type(t),
            Category::TokenEmbd if tied => ty = head_type(t),
            Category::AttnV => {
                if use_more_bits(i_attn_v, n_attn_v) {
                    ty = GgmlType::Q6_K;
                }
                if plan.n_expert == 8 {
                    ty = GgmlType::Q8_0;
                }
                i_attn_v += 1;
            }
            Category::AttnK if plan.n_expert == 8 => ty = GgmlType::Q8_0,
            Category::FfnDown => {
                let i_layer = if plan.n_expert > 1 {
                    layer_of(&t.name)
                        .filter(|&l| l < plan.n_layer)
                        .ok_or_else(|| {
                            format!("tensor '{}': no layer index below {}", t.name, plan.n_layer)
                        })?
                } else {
                    i_ffn_down
                };
                if use_more_bits(i_layer, plan.n_layer) {
                    ty = GgmlType::Q6_K;
                }
                i_ffn_down += 1;
            }
            Category::AttnQkv => return Err(needs_q5_k(t)),
            Category::AttnOutput if plan.n_expert == 8 => return Err(needs_q5_k(t)),
            _ => {}
        }
        let ty = fallback(t, ty)?;
        plan.tensors[idx].ggml_type = ty;
    }
    Ok(())
}

fn needs_q5_k(t: &PlannedTensor) -> String {
    format!(
        "tensor '{}': Q4_K_M puts it in Q5_K, which specula cannot quantize",
        t.name
    )
}

/// The output head's type: Q6_K, or Q8_0 when its rows are not whole Q6_K blocks.
fn head_type(t: &PlannedTensor) -> GgmlType {
    if row_len(t).is_multiple_of(256) {
        GgmlType::Q6_K
    } else {
        GgmlType::Q8_0
    }
}

/// llama-quantize's fallback for rows that are not whole blocks of the chosen type.
fn fallback(t: &PlannedTensor, ty: GgmlType) -> Result<GgmlType, String> {
    let n = row_len(t);
    if n.is_multiple_of(ty.block_elems()) {
        return Ok(ty);
    }
    let next = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => {
            return Err(format!(
                "tensor '{}': rows of {n} are not whole {other} blocks and llama.cpp defines no fallback",
                t.name
            ))
        }
    };
    Ok(if n.is_multiple_of(next.block_elems()) {
        next
    } else {
        GgmlType::F16
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_follow_llama_cpp() {
        let picked: Vec<usize> = (0..60).filter(|&i| use_more_bits(i, 60)).collect();
        // 60 layers: the first 7, the last 8 (52..60) and every third from 9.
        assert_eq!(&picked[..7], &[0, 1, 2, 3, 4, 5, 6]);
        assert!(picked.contains(&9) && picked.contains(&12) && !picked.contains(&10));
        assert!((52..60).all(|i| picked.contains(&i)));
        assert_eq!(
            (0..6).filter(|&i| use_more_bits(i, 6)).collect::<Vec<_>>(),
            [2, 5]
        );
    }

    /// The real-size layouts in `xtask/shapes/` were written by a generator outside the project
    /// that imitates llama.cpp's Q4_K_M rule (and loaded by llama.cpp); the mix must give every
    /// tensor the type those files have.
    #[test]
    fn q4_k_m_mix_matches_the_real_size_layouts() {
        use crate::kv::Kv;
        use crate::plan::TensorSource;
        let shapes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/shapes");
        for (file, n_layer, n_expert) in [
            ("gemma4-31b.q4_k_m.tsv", 60, 0),
            ("gemma4-26b-a4b.q4_k_m.tsv", 30, 128),
        ] {
            let text = std::fs::read_to_string(shapes.join(file)).unwrap();
            let rows: Vec<(String, GgmlType, Vec<u64>)> = text
                .lines()
                .skip(1)
                .map(|line| {
                    let cols: Vec<&str> = line.split('\t').collect();
                    let shape = cols[2].split(',').map(|d| d.parse().unwrap()).collect();
                    (
                        cols[0].to_string(),
                        GgmlType::from_name(cols[1]).unwrap(),
                        shape,
                    )
                })
                .collect();
            let mut plan = Plan {
                arch: "gemma4",
                model_kv: Kv::new(),
                tokenizer_kv: Kv::new(),
                tensors: rows
                    .iter()
                    .map(|(name, _, shape)| {
                        PlannedTensor::new(
                            name.clone(),
                            shape.clone(),
                            TensorSource::Values(Vec::new()),
                        )
                    })
                    .collect(),
                n_expert,
                n_layer,
            };
            assign_types(&mut plan, OutType::Q4KM).unwrap();
            let mut n_q6_k = 0;
            for ((name, want, _), t) in rows.iter().zip(&plan.tensors) {
                assert_eq!(t.ggml_type, *want, "{file}: {name}");
                n_q6_k += usize::from(*want == GgmlType::Q6_K);
            }
            assert!(n_q6_k > 10, "{file}: {n_q6_k} Q6_K tensors");
        }
    }

    #[test]
    fn out_type_names_round_trip() {
        for t in OutType::ALL {
            assert_eq!(t.name().parse::<OutType>(), Ok(t));
        }
        assert!("q4_0".parse::<OutType>().is_err());
    }
}
