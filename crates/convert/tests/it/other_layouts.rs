//! The E2B-style (`e`: per-layer embeddings, KV sharing, double-wide MLP), 26B-A4B-style
//! (`moe`: experts, router) and centroid-head assistant (`assistant_e`) fixtures have no
//! checkpoint folder, so one is rebuilt from each GGUF: the transformers names (written out
//! here from the model's documentation, independently of the crate's table), the config the
//! fixture manifest records, the shared tokenizer files, and every tensor in f32 (the f16
//! values are exact). Converting it with `f16`, as the fixtures were, must give the fixture
//! back byte for byte.

use std::path::Path;

use convert::OutType;
use gguf::{quant, GgufFile};
use safetensors::tensor::{Dtype, TensorView};

use crate::testing::{assert_same_gguf, convert_to_temp, fixture};

/// Per-layer names, llama.cpp → transformers.
const LAYER: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("layer_output_scale.weight", "layer_scalar"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    (
        "post_attention_norm.weight",
        "post_attention_layernorm.weight",
    ),
    ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
    ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
    (
        "post_ffw_norm_1.weight",
        "post_feedforward_layernorm_1.weight",
    ),
    (
        "post_ffw_norm_2.weight",
        "post_feedforward_layernorm_2.weight",
    ),
    (
        "pre_ffw_norm_2.weight",
        "pre_feedforward_layernorm_2.weight",
    ),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("inp_gate.weight", "per_layer_input_gate.weight"),
    ("proj.weight", "per_layer_projection.weight"),
    ("post_norm.weight", "post_per_layer_input_norm.weight"),
    ("ffn_gate_up_exps.weight", "experts.gate_up_proj"),
    ("ffn_down_exps.weight", "experts.down_proj"),
    ("ffn_gate_inp.weight", "router.proj.weight"),
    ("ffn_gate_inp.scale", "router.scale"),
    ("ffn_down_exps.scale", "router.per_expert_scale"),
];

/// The transformers name of a GGUF tensor (`None` for the generated `rope_freqs`).
fn hf_name(gguf: &str) -> Option<String> {
    let whole = match gguf {
        "rope_freqs.weight" => return None,
        "token_embd.weight" => "model.embed_tokens.weight",
        "per_layer_token_embd.weight" => "model.embed_tokens_per_layer.weight",
        "per_layer_model_proj.weight" => "model.per_layer_model_projection.weight",
        "per_layer_proj_norm.weight" => "model.per_layer_projection_norm.weight",
        "output_norm.weight" => "model.norm.weight",
        "nextn.pre_projection.weight" => "pre_projection.weight",
        "nextn.post_projection.weight" => "post_projection.weight",
        other => {
            let (layer, suffix) = other.strip_prefix("blk.").unwrap().split_once('.').unwrap();
            let (_, hf) = LAYER
                .iter()
                .find(|(g, _)| *g == suffix)
                .unwrap_or_else(|| panic!("{other}"));
            return Some(format!("model.layers.{layer}.{hf}"));
        }
    };
    Some(whole.to_string())
}

/// Writes a checkpoint folder for fixture `name` into `dir/name`.
fn rebuild(name: &str, architecture: &str, dir: &Path) -> std::path::PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir(&folder).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("manifest.json")).unwrap()).unwrap();
    let mut config = manifest["models"][name]["config"].clone();
    // save_pretrained leaves out the path it was loaded from.
    config.as_object_mut().unwrap().remove("_name_or_path");
    config["architectures"] = serde_json::json!([architecture]);
    std::fs::write(
        folder.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(fixture("hf/dense").join(file), folder.join(file)).unwrap();
    }
    let gguf = GgufFile::open(fixture(&format!("{name}.gguf"))).unwrap();
    let mut tensors = Vec::new();
    for t in gguf.tensors() {
        let Some(hf) = hf_name(t.name()) else {
            continue;
        };
        let values = quant::dequantize_to_vec(t.ggml_type(), gguf.tensor_data(t).unwrap()).unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape: Vec<usize> = t.shape().iter().rev().map(|&d| d as usize).collect();
        tensors.push((hf, shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &folder.join("model.safetensors")).unwrap();
    folder
}

fn round_trip(name: &str, architecture: &str) {
    let dir = tempfile::tempdir().unwrap();
    let folder = rebuild(name, architecture, dir.path());
    let out = convert_to_temp(&folder, OutType::F16, None);
    let reference = fixture(&format!("{name}.gguf"));
    let c = assert_same_gguf(&out.path, &reference);
    eprintln!("{name}: {c:?}");
    assert!(std::fs::read(&out.path).unwrap() == std::fs::read(&reference).unwrap());
}

#[test]
fn e2b_style_target_round_trips() {
    round_trip("e", "Gemma4ForCausalLM");
}

#[test]
fn moe_target_round_trips() {
    round_trip("moe", "Gemma4ForCausalLM");
}

#[test]
fn centroid_assistant_round_trips() {
    round_trip("assistant_e", "Gemma4AssistantForCausalLM");
}
