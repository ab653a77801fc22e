//! Checkpoint variants convert to the same model: shards with an index, f16 or bf16 storage,
//! the multimodal `Gemma4ForConditionalGeneration` layout (text config nested, language model
//! under `model.language_model.`, vision tower left out).

use std::path::{Path, PathBuf};

use convert::OutType;
use gguf::{GgmlType, GgufFile};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::testing::{assert_same_gguf, convert_to_temp, fixture};

/// One tensor: name, dtype, shape, bytes.
type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn dense_tensors() -> Vec<Tensor> {
    let bytes = std::fs::read(fixture("hf/dense/model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<Tensor> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write(path: &Path, tensors: &[Tensor]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A folder named `dense` (the name becomes `general.name`) with hf/dense's other files.
fn dense_folder(root: &Path) -> PathBuf {
    let dir = root.join("dense");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("hf/dense")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "model.safetensors" {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn f32_to(values: &[u8], dtype: Dtype) -> Vec<u8> {
    values
        .as_chunks::<4>()
        .0
        .iter()
        .flat_map(|b| {
            let v = f32::from_le_bytes(*b);
            match dtype {
                Dtype::F16 => half::f16::from_f32(v).to_le_bytes(),
                _ => half::bf16::from_f32(v).to_le_bytes(),
            }
        })
        .collect()
}

#[test]
fn f16_shards_with_an_index_give_the_same_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = dense_folder(root.path());
    // dense's weights are all f16-representable, so f16 storage loses nothing.
    let tensors: Vec<Tensor> = dense_tensors()
        .into_iter()
        .map(|(n, _, s, b)| (n, Dtype::F16, s, f32_to(&b, Dtype::F16)))
        .collect();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write(&dir.join(names[0]), first);
    write(&dir.join(names[1]), second);
    let map: serde_json::Map<String, serde_json::Value> = first
        .iter()
        .map(|t| (t.0.clone(), names[0].into()))
        .chain(second.iter().map(|t| (t.0.clone(), names[1].into())))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let out = convert_to_temp(&dir, OutType::F32, None);
    assert_same_gguf(&out.path, &fixture("dense.gguf"));
    assert!(std::fs::read(&out.path).unwrap() == std::fs::read(fixture("dense.gguf")).unwrap());
}

#[test]
fn bf16_storage_is_copied_into_a_bf16_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = dense_folder(root.path());
    let tensors: Vec<Tensor> = dense_tensors()
        .into_iter()
        .map(|(n, _, s, b)| (n, Dtype::BF16, s, f32_to(&b, Dtype::BF16)))
        .collect();
    write(&dir.join("model.safetensors"), &tensors);
    let out = convert_to_temp(&dir, OutType::Bf16, None);
    let file = GgufFile::open(&out.path).unwrap();
    let stored = |gguf: &str, hf: &str| {
        let t = file.require_tensor(gguf).unwrap();
        let src = tensors.iter().find(|t| t.0 == hf).unwrap();
        (
            t.ggml_type(),
            file.tensor_data(t).unwrap().to_vec(),
            src.3.clone(),
        )
    };
    let (ty, data, src) = stored(
        "blk.2.attn_q.weight",
        "model.layers.2.self_attn.q_proj.weight",
    );
    assert_eq!(ty, GgmlType::BF16);
    assert_eq!(data, src, "bf16 matrices are copied as stored");
    let (ty, data, src) = stored(
        "blk.2.attn_norm.weight",
        "model.layers.2.input_layernorm.weight",
    );
    assert_eq!(ty, GgmlType::F32);
    let widened: Vec<u8> = src
        .as_chunks::<2>()
        .0
        .iter()
        .flat_map(|b| half::bf16::from_le_bytes(*b).to_f32().to_le_bytes())
        .collect();
    assert_eq!(data, widened, "norms are widened to f32 exactly");
}

#[test]
fn conditional_generation_layout_gives_the_same_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = dense_folder(root.path());
    let mut tensors: Vec<Tensor> = dense_tensors()
        .into_iter()
        .map(|(n, d, s, b)| (n.replacen("model.", "model.language_model.", 1), d, s, b))
        .collect();
    tensors.push((
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight".into(),
        Dtype::F32,
        vec![2, 2],
        vec![0; 16],
    ));
    tensors.push((
        "model.embed_vision.embedding_projection.weight".into(),
        Dtype::F32,
        vec![2, 2],
        vec![0; 16],
    ));
    write(&dir.join("model.safetensors"), &tensors);
    let text: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("hf/dense/config.json")).unwrap()).unwrap();
    let config = serde_json::json!({
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "text_config": text,
        "vision_config": {"hidden_size": 2, "model_type": "gemma4_vision"},
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let out = convert_to_temp(&dir, OutType::F32, None);
    assert_same_gguf(&out.path, &fixture("dense.gguf"));
}

#[test]
fn generation_config_sampling_defaults_become_general_sampling_keys() {
    let root = tempfile::tempdir().unwrap();
    let dir = dense_folder(root.path());
    std::fs::copy(
        fixture("hf/dense/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let generation = serde_json::json!({
        "bos_token_id": 2, "do_sample": true, "top_k": 64, "top_p": 0.95, "temperature": 1.0,
    });
    std::fs::write(dir.join("generation_config.json"), generation.to_string()).unwrap();
    let out = convert_to_temp(&dir, OutType::F32, None);
    let ours = GgufFile::open(&out.path).unwrap();
    let keys: Vec<&str> = ours.metadata().map(|(k, _)| k).collect();
    assert_eq!(
        &keys[..6],
        [
            "general.architecture",
            "general.type",
            "general.sampling.top_k",
            "general.sampling.top_p",
            "general.sampling.temp",
            "general.name"
        ]
    );
    assert_eq!(
        ours.get("general.sampling.top_k").map(|v| v.to_value()),
        Some(gguf::Value::I32(64))
    );
    assert_eq!(
        ours.get("general.sampling.top_p").map(|v| v.to_value()),
        Some(gguf::Value::F32(0.95))
    );
    assert_eq!(
        ours.get("general.sampling.temp").map(|v| v.to_value()),
        Some(gguf::Value::F32(1.0))
    );
    // Everything else is dense.gguf's.
    let reference = GgufFile::open(fixture("dense.gguf")).unwrap();
    for (key, value) in reference.metadata() {
        assert_eq!(
            ours.get(key).map(|v| v.to_value()),
            Some(value.to_value()),
            "{key}"
        );
    }
    assert_eq!(ours.metadata_len(), reference.metadata_len() + 3);
}
