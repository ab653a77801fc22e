//! Bad folders give one-line errors naming the file and the key or tensor, and leave nothing
//! behind: no output file, no temporary file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use convert::{convert, ConvertOptions, OutType};
use safetensors::tensor::{Dtype, TensorView};

use crate::testing::fixture;

/// A writable copy of a fixture folder, and an output folder.
struct Scratch {
    _root: tempfile::TempDir,
    input: PathBuf,
    out_dir: PathBuf,
}

fn scratch(folder: &str) -> Scratch {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("model");
    let out_dir = root.path().join("out");
    std::fs::create_dir(&input).unwrap();
    std::fs::create_dir(&out_dir).unwrap();
    for entry in std::fs::read_dir(fixture(folder)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, input.join(path.file_name().unwrap())).unwrap();
    }
    Scratch {
        _root: root,
        input,
        out_dir,
    }
}

impl Scratch {
    /// Converts with `target_dir`, expecting an error; checks nothing was left in the output
    /// folder and returns the message.
    fn fails_with_target(&self, target_dir: Option<&Path>) -> String {
        let options = ConvertOptions {
            input: self.input.clone(),
            output: self.out_dir.join("out.gguf"),
            out_type: OutType::F32,
            target_dir: target_dir.map(Path::to_path_buf),
        };
        let err = convert(&options, &mut |_, _| {}).expect_err("the conversion should fail");
        let message = err.to_string();
        eprintln!("{message}");
        assert!(!message.contains('\n'), "not one line: {message}");
        let left: Vec<_> = std::fs::read_dir(&self.out_dir).unwrap().collect();
        assert!(left.is_empty(), "{message}: left {left:?} behind");
        message
    }

    fn fails(&self) -> String {
        self.fails_with_target(None)
    }

    /// Edits `config.json` as JSON.
    fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = self.input.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    /// Rewrites `model.safetensors` after `edit` changed its tensors.
    fn edit_tensors(&self, edit: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
        let path = self.input.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
            .collect();
        edit(&mut tensors);
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &path).unwrap();
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "'{part}' not in: {message}");
    }
}

#[test]
fn missing_config_json() {
    let s = scratch("hf/dense");
    std::fs::remove_file(s.input.join("config.json")).unwrap();
    assert_mentions(&s.fails(), &["config.json", "not found"]);
}

#[test]
fn unknown_architecture() {
    let s = scratch("hf/dense");
    s.edit_config(|c| c["architectures"] = serde_json::json!(["LlamaForCausalLM"]));
    assert_mentions(
        &s.fails(),
        &["config.json", "'LlamaForCausalLM' is not supported"],
    );
}

#[test]
fn missing_config_key() {
    let s = scratch("hf/dense");
    s.edit_config(|c| {
        c.as_object_mut().unwrap().remove("num_attention_heads");
    });
    assert_mentions(
        &s.fails(),
        &["config.json", "key 'num_attention_heads' is missing"],
    );
}

#[test]
fn missing_tensor() {
    let s = scratch("hf/dense");
    s.edit_tensors(|t| {
        t.remove("model.layers.3.self_attn.q_proj.weight").unwrap();
    });
    assert_mentions(
        &s.fails(),
        &[
            "model",
            "tensor 'model.layers.3.self_attn.q_proj.weight' is missing",
            "blk.3.attn_q.weight",
        ],
    );
}

#[test]
fn shape_mismatch() {
    let s = scratch("hf/dense");
    s.edit_tensors(|t| {
        let (_, shape, data) = t.get_mut("model.layers.1.mlp.up_proj.weight").unwrap();
        *shape = vec![128, 256];
        data.truncate(128 * 256 * 4);
    });
    assert_mentions(
        &s.fails(),
        &[
            "model.safetensors",
            "tensor 'model.layers.1.mlp.up_proj.weight'",
            "shape [128, 256]",
            "[256, 256]",
        ],
    );
}

#[test]
fn unsupported_dtype() {
    let s = scratch("hf/dense");
    s.edit_tensors(|t| {
        let (dtype, _, _) = t.get_mut("model.layers.0.self_attn.k_proj.weight").unwrap();
        *dtype = Dtype::I32;
    });
    assert_mentions(
        &s.fails(),
        &[
            "model.safetensors",
            "tensor 'model.layers.0.self_attn.k_proj.weight'",
            "unsupported dtype I32",
        ],
    );
}

#[test]
fn unknown_tensor() {
    let s = scratch("hf/dense");
    s.edit_tensors(|t| {
        t.insert(
            "model.layers.0.self_attn.qkv_proj.weight".into(),
            (Dtype::F32, vec![4], vec![0; 16]),
        );
    });
    assert_mentions(
        &s.fails(),
        &[
            "tensor 'model.layers.0.self_attn.qkv_proj.weight'",
            "no GGUF name",
        ],
    );
}

#[test]
fn truncated_safetensors() {
    let s = scratch("hf/dense");
    let path = s.input.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(&s.fails(), &["model.safetensors", "exceed"]);
}

#[test]
fn no_weights() {
    let s = scratch("hf/dense");
    std::fs::remove_file(s.input.join("model.safetensors")).unwrap();
    assert_mentions(&s.fails(), &["no model*.safetensors"]);
}

#[test]
fn missing_tokenizer() {
    let s = scratch("hf/dense");
    std::fs::remove_file(s.input.join("tokenizer.json")).unwrap();
    assert_mentions(&s.fails(), &["tokenizer.json", "not found"]);
}

#[test]
fn dflash_needs_its_targets_folder() {
    let s = scratch("hf/dflash");
    assert_mentions(&s.fails(), &["--target-dir"]);
    // A target folder that is not a Gemma 4 checkpoint.
    let not_gemma = scratch("hf/dflash");
    assert_mentions(
        &s.fails_with_target(Some(&not_gemma.input)),
        &["config.json", "not a Gemma 4 checkpoint"],
    );
}

#[test]
fn dflash_target_layer_beyond_the_target() {
    let s = scratch("hf/dflash");
    s.edit_config(|c| c["dflash_config"]["target_layer_ids"] = serde_json::json!([1, 3, 6]));
    assert_mentions(
        &s.fails_with_target(Some(&fixture("hf/dense"))),
        &["config.json", "target_layer_ids holds 6", "last layer 5"],
    );
}

#[test]
fn target_dir_is_for_dflash_only() {
    let s = scratch("hf/dense");
    assert_mentions(
        &s.fails_with_target(Some(&fixture("hf/dense"))),
        &["--target-dir applies to DFlash"],
    );
}

#[test]
fn unwritable_output_leaves_nothing_behind() {
    let s = scratch("hf/dense");
    // The output path is an existing folder: the rename fails after the whole file was written.
    std::fs::create_dir(s.out_dir.join("out.gguf")).unwrap();
    let options = ConvertOptions {
        input: s.input.clone(),
        output: s.out_dir.join("out.gguf"),
        out_type: OutType::F32,
        target_dir: None,
    };
    let err = convert(&options, &mut |_, _| {}).expect_err("renaming onto a folder fails");
    assert_mentions(&err.to_string(), &["out.gguf"]);
    let left: Vec<String> = std::fs::read_dir(&s.out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["out.gguf"], "only the pre-existing folder remains");
    assert!(s.out_dir.join("out.gguf").is_dir());
}

#[test]
fn impossible_sizes_fail_before_writing() {
    let s = scratch("hf/dense");
    s.edit_config(|c| c["num_key_value_heads"] = serde_json::json!(3));
    assert_mentions(
        &s.fails(),
        &[
            "config.json",
            "num_attention_heads 4 is not a positive multiple of num_key_value_heads 3",
        ],
    );
    let s = scratch("hf/dense");
    s.edit_config(|c| c["enable_moe_block"] = serde_json::json!(true));
    assert_mentions(&s.fails(), &["config.json", "key 'num_experts' is missing"]);
}

#[test]
fn hostile_safetensors_headers() {
    let header = |json: &str, len: u64, data: usize| {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        bytes
    };
    let exact = |json: &str, data: usize| header(json, json.len() as u64, data);
    let cases: [(Vec<u8>, &str); 6] = [
        (vec![1, 2, 3], "too short for a safetensors header"),
        (header("{}", u64::MAX, 0), "does not fit the file"),
        (header("{nope", 5, 0), "header is not valid JSON"),
        (header("[1]", 3, 0), "header is not a JSON object"),
        (
            exact(
                r#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,60]}}"#,
                64,
            ),
            "60 bytes for shape [4, 4] of F32",
        ),
        (
            exact(
                r#"{"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#,
                8,
            ),
            "bytes for shape",
        ),
    ];
    for (bytes, expected) in cases {
        let s = scratch("hf/dense");
        std::fs::write(s.input.join("model.safetensors"), &bytes).unwrap();
        assert_mentions(&s.fails(), &["model.safetensors", expected]);
    }
}
