//! Helpers: fixture paths, converting into a temporary folder, comparing two GGUF files.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use convert::{convert, ConvertOptions, OutType, Summary};
use gguf::{quant, GgufFile, Value};
use safetensors::tensor::{Dtype, TensorView};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A golden file or folder in the repo's `fixtures/`; panics with a clear message if absent.
/// `hf/dense/…` and `hf/assistant/…` come from [`hf_root`].
pub fn fixture(name: &str) -> PathBuf {
    if name.starts_with("hf/dense") || name.starts_with("hf/assistant") {
        return hf_root().join(name.trim_start_matches("hf/"));
    }
    let path = repo_root().join("fixtures").join(name);
    assert!(
        path.exists(),
        "fixture {} is missing: copy it unchanged from ../shared/fixtures",
        path.display()
    );
    path
}

/// A converted file in a temporary folder (removed when the first value drops).
pub struct Converted {
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub summary: Summary,
}

/// Converts `input` with `out_type` (and a DFlash drafter's `target_dir`).
pub fn convert_to_temp(input: &Path, out_type: OutType, target_dir: Option<&Path>) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let options = ConvertOptions {
        input: input.to_path_buf(),
        output: path.clone(),
        out_type,
        target_dir: target_dir.map(Path::to_path_buf),
    };
    let summary = convert(&options, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    Converted {
        _dir: dir,
        path,
        summary,
    }
}

/// The result of [`assert_same_gguf`].
#[derive(Debug)]
pub struct Comparison {
    pub n_keys: usize,
    pub n_tensors: usize,
    pub n_tensor_bytes: u64,
}

fn entries(file: &GgufFile) -> Vec<(String, Value)> {
    file.metadata()
        .map(|(k, v)| (k.to_string(), v.to_value()))
        .collect()
}

/// Asserts that `ours` holds the same metadata (keys, types, values, order) and the same
/// tensors (names, order, shapes, types, bytes) as `reference`.
pub fn assert_same_gguf(ours: &Path, reference: &Path) -> Comparison {
    let a = GgufFile::open(ours).unwrap();
    let b = GgufFile::open(reference).unwrap();
    let (ka, kb) = (entries(&a), entries(&b));
    let missing: Vec<&str> = kb
        .iter()
        .filter(|(k, _)| !ka.iter().any(|(x, _)| x == k))
        .map(|(k, _)| k.as_str())
        .collect();
    let extra: Vec<&str> = ka
        .iter()
        .filter(|(k, _)| !kb.iter().any(|(x, _)| x == k))
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "keys missing {missing:?}, extra {extra:?}"
    );
    for (key, value) in &kb {
        let ours = &ka.iter().find(|(k, _)| k == key).unwrap().1;
        assert!(
            ours == value,
            "key {key}: ours {}, reference {}",
            short(ours),
            short(value)
        );
    }
    let order_a: Vec<&str> = ka.iter().map(|(k, _)| k.as_str()).collect();
    let order_b: Vec<&str> = kb.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(order_a, order_b, "key order differs");

    let names_a: Vec<&str> = a.tensors().iter().map(|t| t.name()).collect();
    let names_b: Vec<&str> = b.tensors().iter().map(|t| t.name()).collect();
    assert_eq!(names_a, names_b, "tensor names or order differ");
    let mut n_tensor_bytes = 0;
    for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(ta.shape(), tb.shape(), "{}: shape", tb.name());
        assert_eq!(ta.ggml_type(), tb.ggml_type(), "{}: type", tb.name());
        let (da, db) = (a.tensor_data(ta).unwrap(), b.tensor_data(tb).unwrap());
        let first = da.iter().zip(db).position(|(x, y)| x != y);
        assert!(
            da.len() == db.len() && first.is_none(),
            "{}: data differs (first at byte {first:?}, lengths {} vs {})",
            tb.name(),
            da.len(),
            db.len()
        );
        n_tensor_bytes += db.len() as u64;
    }
    Comparison {
        n_keys: kb.len(),
        n_tensors: names_b.len(),
        n_tensor_bytes,
    }
}

fn short(v: &Value) -> String {
    let s = format!("{v:?}");
    if s.len() > 200 {
        format!("{}…", &s[..200])
    } else {
        s
    }
}

/// ‖out − ref‖ / ‖ref‖.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        num += (f64::from(o) - f64::from(r)).powi(2);
        den += f64::from(r).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The folder holding complete `dense/` and `assistant/` transformers checkpoints. The repo keeps
/// only their JSON files (the weights, 11 MB, would crowd the tree); the weights come from
/// `../shared/fixtures/hf` when present, else they are rebuilt from the f32 fixture GGUFs
/// (every value exact) once into the test target folder.
pub fn hf_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let repo = repo_root().join("fixtures/hf");
        let shared = repo_root().join("../shared/fixtures/hf");
        for dir in [&repo, &shared] {
            if dir.join("dense/model.safetensors").exists()
                && dir.join("assistant/model.safetensors").exists()
            {
                return dir.clone();
            }
        }
        let built = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hf-rebuilt");
        let staging = built.with_extension(format!("staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        for name in ["dense", "assistant"] {
            let folder = staging.join(name);
            std::fs::create_dir_all(&folder).unwrap();
            for entry in std::fs::read_dir(repo.join(name)).unwrap() {
                let path = entry.unwrap().path();
                std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
            }
            let gguf = repo_root().join(format!("fixtures/{name}.gguf"));
            write_weights_from_gguf(&gguf, &folder.join("model.safetensors"));
        }
        let _ = std::fs::remove_dir_all(&built);
        std::fs::rename(&staging, &built).unwrap();
        built
    })
}

/// Writes every tensor of `gguf` (but the generated `rope_freqs`) under its transformers name,
/// in f32, to a safetensors file.
pub fn write_weights_from_gguf(gguf: &Path, out: &Path) {
    let file = GgufFile::open(gguf).unwrap();
    let mut tensors = Vec::new();
    for t in file.tensors() {
        let Some(hf) = hf_name(t.name()) else {
            continue;
        };
        let values = quant::dequantize_to_vec(t.ggml_type(), file.tensor_data(t).unwrap()).unwrap();
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
    safetensors::serialize_to_file(views, None, out).unwrap();
}

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
