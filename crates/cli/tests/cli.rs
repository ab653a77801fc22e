//! End-to-end tests of the `specula` binary.

use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn specula(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_specula"))
        .args(args)
        .output()
        .expect("run specula")
}

#[test]
fn inspect_json_describes_the_file() {
    let path = fixture("dense.q8_0.gguf");
    let out = specula(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["version"], 3);
    assert_eq!(v["alignment"], 32);
    assert_eq!(v["architecture"], "gemma4");
    assert_eq!(v["metadata"]["gemma4.block_count"], 6);
    assert_eq!(
        v["metadata"]["gemma4.attention.head_count_kv"],
        serde_json::json!([2, 2, 2, 2, 2, 1])
    );
    assert_eq!(
        v["metadata"]["tokenizer.ggml.tokens"],
        serde_json::json!({"array_of": "string", "len": 1024})
    );
    assert_eq!(v["tensor_count"], 86);
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 86);
    let embd = tensors
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(embd["type"], "Q8_0");
    assert_eq!(embd["shape"], serde_json::json!([256, 1024]));
    assert_eq!(embd["bytes"], 256 * 1024 / 32 * 34);
    assert!(embd["offset"].as_u64().unwrap() % 32 == 0);
}

#[test]
fn inspect_text_lists_types_and_tensors() {
    let path = fixture("moe.gguf");
    let out = specula(&["inspect", "--tensors", path.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("architecture:  gemma4"), "{text}");
    assert!(text.contains("gemma4.expert_count"), "{text}");
    assert!(text.contains("F16"), "{text}");
    assert!(text.contains("blk.0.ffn_gate_up_exps.weight"), "{text}");
    assert!(text.contains("tensors: 134"), "{text}");
}

#[test]
fn unreadable_file_is_one_clear_line_and_nonzero_exit() {
    let bad = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../gguf/tests/data/bad/misaligned_offset.gguf");
    let out = specula(&["inspect", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("misaligned_offset.gguf: tensor 'w': data offset 4 is not a multiple of the alignment 32"), "{err}");

    let out = specula(&["inspect", "/nonexistent.gguf"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.gguf"));
}
