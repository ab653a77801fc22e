//! The golden GGUF files written by llama.cpp's converter: they are exact copies of
//! `../shared/fixtures`, they open, and their metadata and tensors match the manifest's configs.

use gguf::{GgmlType, GgufFile, MetaValue};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::testing::{fixture, repo_root};

const GGUFS: &[&str] = &[
    "dense.gguf",
    "dense.q8_0.gguf",
    "e.gguf",
    "moe.gguf",
    "assistant.gguf",
    "assistant_e.gguf",
    "assistant_tuned.gguf",
    "dflash.gguf",
    "dflash_tuned.gguf",
];

fn manifest() -> Json {
    let text = std::fs::read_to_string(fixture("manifest.json")).expect("read manifest.json");
    serde_json::from_str(&text).expect("manifest.json is JSON")
}

fn sha256(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    format!("{:x}", Sha256::digest(bytes))
}

/// Every file below `dir`, recursively (the copied `hf/` checkpoint folders included).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn fixtures_are_unchanged_copies_of_shared() {
    let shared = repo_root().join("../shared/fixtures");
    if !shared.exists() {
        eprintln!("skipped: {} not present", shared.display());
        return;
    }
    let mut compared = 0;
    let root = repo_root().join("fixtures");
    for path in files_under(&root) {
        let rel = path
            .strip_prefix(&root)
            .expect("under fixtures/")
            .to_owned();
        let original = shared.join(&rel);
        assert!(
            original.exists(),
            "fixtures/{} has no original in ../shared/fixtures",
            rel.display()
        );
        assert_eq!(
            sha256(&path),
            sha256(&original),
            "fixtures/{} differs from ../shared/fixtures",
            rel.display()
        );
        compared += 1;
    }
    // Every GGUF and reference file of the shared set is present here too.
    for entry in std::fs::read_dir(&shared).expect("list shared fixtures") {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".gguf") || name.ends_with(".safetensors") {
            assert!(
                repo_root().join("fixtures").join(&*name).exists(),
                "fixtures/{name} missing"
            );
        }
    }
    assert!(compared >= GGUFS.len());
}

#[test]
fn every_fixture_opens_and_every_tensor_converts() {
    for name in GGUFS {
        let file = GgufFile::open(fixture(name)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file.version(), 3, "{name}");
        assert_eq!(file.alignment(), 32, "{name}");
        assert!(!file.tensors().is_empty(), "{name}");
        for info in file.tensors() {
            let values = file
                .tensor_f32(info.name())
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                values.len() as u64,
                info.n_elems(),
                "{name} {}",
                info.name()
            );
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{name}: {} has non-finite values",
                info.name()
            );
            assert!(
                values.iter().any(|&v| v != 0.0),
                "{name}: {} is all zeros",
                info.name()
            );
        }
        for (key, value) in file.metadata() {
            assert!(!key.is_empty());
            if let MetaValue::Array(array) = value {
                assert_eq!(array.iter().count(), array.len(), "{name} {key}");
            }
        }
    }
}

fn u(file: &GgufFile, key: &str) -> u64 {
    file.get_as::<usize>(key).unwrap_or_else(|e| panic!("{e}")) as u64
}

fn f(file: &GgufFile, key: &str) -> f64 {
    f64::from(file.get_as::<f32>(key).unwrap_or_else(|e| panic!("{e}")))
}

fn shape(file: &GgufFile, tensor: &str) -> Vec<u64> {
    file.require_tensor(tensor)
        .unwrap_or_else(|e| panic!("{e}"))
        .shape()
        .to_vec()
}

fn j(v: &Json) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

#[test]
fn target_fixtures_match_their_configs() {
    let manifest = manifest();
    let vocab = j(&manifest["tokenizer"]["vocab_size"]);
    for (model, file_name) in [
        ("dense", "dense.gguf"),
        ("dense", "dense.q8_0.gguf"),
        ("e", "e.gguf"),
        ("moe", "moe.gguf"),
    ] {
        let cfg = &manifest["models"][model]["config"];
        let file = GgufFile::open(fixture(file_name)).unwrap();
        assert_eq!(file.architecture().unwrap(), "gemma4");
        let n_layers = j(&cfg["num_hidden_layers"]);
        let hidden = j(&cfg["hidden_size"]);
        assert_eq!(u(&file, "gemma4.block_count"), n_layers, "{file_name}");
        assert_eq!(u(&file, "gemma4.embedding_length"), hidden);
        assert_eq!(
            u(&file, "gemma4.context_length"),
            j(&cfg["max_position_embeddings"])
        );
        assert_eq!(
            u(&file, "gemma4.attention.head_count"),
            j(&cfg["num_attention_heads"])
        );
        assert_eq!(
            u(&file, "gemma4.attention.sliding_window"),
            j(&cfg["sliding_window"])
        );
        assert_eq!(
            u(&file, "gemma4.attention.key_length_swa"),
            j(&cfg["head_dim"])
        );
        assert_eq!(
            u(&file, "gemma4.attention.shared_kv_layers"),
            j(&cfg["num_kv_shared_layers"])
        );
        assert_eq!(
            u(&file, "gemma4.embedding_length_per_layer_input"),
            j(&cfg["hidden_size_per_layer_input"])
        );
        assert_eq!(
            f(&file, "gemma4.final_logit_softcapping"),
            cfg["final_logit_softcapping"].as_f64().unwrap()
        );
        let pattern: Vec<bool> = file
            .get_as("gemma4.attention.sliding_window_pattern")
            .unwrap();
        let expected: Vec<bool> = cfg["layer_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t == "sliding_attention")
            .collect();
        assert_eq!(pattern, expected, "{file_name}");
        if let Some(n_experts) = cfg["num_experts"].as_u64() {
            assert_eq!(u(&file, "gemma4.expert_count"), n_experts);
            assert_eq!(
                u(&file, "gemma4.expert_used_count"),
                j(&cfg["top_k_experts"])
            );
        }
        assert_eq!(shape(&file, "token_embd.weight"), [hidden, vocab]);
        let tokens = file
            .get_as::<gguf::MetaArray>("tokenizer.ggml.tokens")
            .unwrap();
        assert_eq!(tokens.len() as u64, vocab);
        let tokens: Vec<&str> = tokens.strings().expect("string array").collect();
        assert_eq!(&tokens[..3], ["<pad>", "<eos>", "<bos>"]);
        assert_eq!(tokens[14], "<0x00>");
        assert_eq!(u(&file, "tokenizer.ggml.bos_token_id"), 2);
        for layer in 0..n_layers {
            let full = !expected[layer as usize];
            let k_eq_v = cfg["attention_k_eq_v"].as_bool() == Some(true);
            assert!(file.tensor(&format!("blk.{layer}.attn_q.weight")).is_some());
            let has_v = file.tensor(&format!("blk.{layer}.attn_v.weight")).is_some();
            let kv_shared = layer >= n_layers - j(&cfg["num_kv_shared_layers"]);
            assert_eq!(
                has_v,
                !(kv_shared || (full && k_eq_v)),
                "{file_name}: attn_v presence on layer {layer}"
            );
        }
    }
}

#[test]
fn drafter_fixtures_match_their_configs() {
    let manifest = manifest();
    for (model, file_name) in [
        ("assistant", "assistant.gguf"),
        ("assistant", "assistant_tuned.gguf"),
        ("assistant_e", "assistant_e.gguf"),
    ] {
        let cfg = &manifest["models"][model]["config"];
        let text = &cfg["text_config"];
        let file = GgufFile::open(fixture(file_name)).unwrap();
        assert_eq!(file.architecture().unwrap(), "gemma4-assistant");
        let hidden = j(&text["hidden_size"]);
        let backbone = j(&cfg["backbone_hidden_size"]);
        assert_eq!(
            u(&file, "gemma4-assistant.block_count"),
            j(&text["num_hidden_layers"])
        );
        assert_eq!(u(&file, "gemma4-assistant.embedding_length"), hidden);
        assert_eq!(u(&file, "gemma4-assistant.embedding_length_out"), backbone);
        assert_eq!(
            shape(&file, "nextn.pre_projection.weight"),
            [2 * backbone, hidden]
        );
        assert_eq!(
            shape(&file, "nextn.post_projection.weight"),
            [hidden, backbone]
        );
    }
    for file_name in ["dflash.gguf", "dflash_tuned.gguf"] {
        let cfg = &manifest["models"]["dflash"]["config"];
        let file = GgufFile::open(fixture(file_name)).unwrap();
        assert_eq!(file.architecture().unwrap(), "dflash");
        let hidden = j(&cfg["hidden_size"]);
        assert_eq!(u(&file, "dflash.block_count"), j(&cfg["num_hidden_layers"]));
        assert_eq!(u(&file, "dflash.block_size"), j(&cfg["block_size"]));
        let layers: Vec<i32> = match file.get("dflash.target_layers") {
            Some(MetaValue::Array(a)) => a.iter().map(|v| v.as_u64().unwrap() as i32).collect(),
            other => panic!("dflash.target_layers: {other:?}"),
        };
        let ids: Vec<i32> = cfg["dflash_config"]["target_layer_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| j(v) as i32 + 1)
            .collect();
        assert_eq!(layers, ids, "target_layers stores layer ids + 1");
        assert_eq!(
            shape(&file, "fc.weight"),
            [hidden * ids.len() as u64, hidden]
        );
    }
}

#[test]
fn q8_0_fixture_has_the_f32_fixture_tensors() {
    let f32_file = GgufFile::open(fixture("dense.gguf")).unwrap();
    let q8_file = GgufFile::open(fixture("dense.q8_0.gguf")).unwrap();
    assert_eq!(f32_file.tensors().len(), q8_file.tensors().len());
    let mut n_q8 = 0;
    for info in q8_file.tensors() {
        let original = f32_file.require_tensor(info.name()).unwrap();
        assert_eq!(info.shape(), original.shape(), "{}", info.name());
        match info.ggml_type() {
            GgmlType::Q8_0 => n_q8 += 1,
            GgmlType::F32 => assert_eq!(
                q8_file.tensor_data(info).unwrap(),
                f32_file.tensor_data(original).unwrap()
            ),
            other => panic!("{}: unexpected type {other}", info.name()),
        }
    }
    assert!(n_q8 > 40, "only {n_q8} Q8_0 tensors");
}
