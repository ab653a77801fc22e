//! The E2B-style (`e`: per-layer embeddings, KV sharing, double-wide MLP), 26B-A4B-style
//! (`moe`: experts, router) and centroid-head assistant (`assistant_e`) fixtures have no
//! checkpoint folder, so one is rebuilt from each GGUF: the transformers names (written out
//! here from the model's documentation, independently of the crate's table), the config the
//! fixture manifest records, the shared tokenizer files, and every tensor in f32 (the f16
//! values are exact). Converting it with `f16`, as the fixtures were, must give the fixture
//! back byte for byte.

use std::path::Path;

use convert::OutType;

use crate::testing::{assert_same_gguf, convert_to_temp, fixture, write_weights_from_gguf};

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
    write_weights_from_gguf(
        &fixture(&format!("{name}.gguf")),
        &folder.join("model.safetensors"),
    );
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
