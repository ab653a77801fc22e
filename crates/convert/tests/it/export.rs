//! `export_target`: a Gemma 4 target GGUF back to a transformers folder. From llama.cpp's f32
//! `dense.gguf` it must give back the checkpoint behind it bit for bit; from a Q8_0 file, the
//! dequantized values; a file that is not a Gemma 4 target, or a template without a config,
//! is an error naming the file.

use convert::{export_target, OutType};
use gguf::GgufFile;
use safetensors::SafeTensors;

use crate::testing::{convert_to_temp, fixture};

/// Every tensor of `b` is in `a` with the same dtype, shape and bytes, and `a` has no others.
fn assert_same_tensors(a: &SafeTensors, b: &SafeTensors) {
    let mut names_a = a.names();
    let mut names_b = b.names();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b);
    for name in names_b {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!(x.dtype(), y.dtype(), "{name}");
        assert_eq!(x.shape(), y.shape(), "{name}");
        assert!(x.data() == y.data(), "{name}: values differ");
    }
}

#[test]
fn f32_gguf_exports_the_checkpoint_behind_it() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dense");
    let done = export_target(&fixture("dense.gguf"), &fixture("hf/dense"), &dir).unwrap();
    let n_gguf = GgufFile::open(fixture("dense.gguf"))
        .unwrap()
        .tensors()
        .len();
    assert_eq!(done.n_tensors, n_gguf - 1, "all but rope_freqs.weight");
    assert!(
        done.n_files >= 2,
        "config.json and the tokenizer are copied"
    );
    let ours = std::fs::read(dir.join("model.safetensors")).unwrap();
    let theirs = std::fs::read(fixture("hf/dense/model.safetensors")).unwrap();
    let (_, header) = SafeTensors::read_metadata(&ours).unwrap();
    let format = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("format").cloned());
    assert_eq!(format.as_deref(), Some("pt"), "torch's header metadata");
    assert_same_tensors(
        &SafeTensors::deserialize(&ours).unwrap(),
        &SafeTensors::deserialize(&theirs).unwrap(),
    );
    // And the exported folder converts back to the same GGUF.
    let again = convert_to_temp(&dir, OutType::F32, None);
    crate::testing::assert_same_gguf(&again.path, &fixture("dense.gguf"));
}

#[test]
fn quantized_gguf_exports_its_dequantized_values() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dense");
    let q8 = fixture("dense.q8_0.gguf");
    export_target(&q8, &fixture("hf/dense"), &dir).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let file = GgufFile::open(&q8).unwrap();
    let q = file.require_tensor("blk.0.attn_q.weight").unwrap();
    let want = file.tensor_f32("blk.0.attn_q.weight").unwrap();
    let got = st.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    let shape: Vec<usize> = q.shape().iter().rev().map(|&d| d as usize).collect();
    assert_eq!(got.shape(), shape.as_slice());
    let got: Vec<f32> = got
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn export_refuses_what_it_cannot_write() {
    let out = tempfile::tempdir().unwrap();
    let err = export_target(&fixture("dflash.gguf"), &fixture("hf/dense"), out.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dflash.gguf") && err.contains("general.architecture"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let err = export_target(&fixture("dense.gguf"), empty.path(), out.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    assert!(!out.path().join("model.safetensors").exists());
}
