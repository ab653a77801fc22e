//! Converting the three checkpoint folders behind the golden GGUFs reproduces those files
//! byte for byte: llama.cpp's own converter wrote `dense.gguf`, `assistant.gguf` and
//! `dflash.gguf` from `hf/dense`, `hf/assistant` and `hf/dflash` (the last with
//! `--target-model-dir hf/dense`), all with `--outtype f32`.

use std::path::Path;

use convert::OutType;

use crate::testing::{assert_same_gguf, convert_to_temp, fixture, Comparison};

fn reproduces(folder: &str, target: Option<&Path>, reference: &str) -> Comparison {
    let out = convert_to_temp(&fixture(folder), OutType::F32, target);
    let c = assert_same_gguf(&out.path, &fixture(reference));
    eprintln!("{folder}: {c:?}");
    assert_eq!(out.summary.n_keys, c.n_keys);
    assert_eq!(
        out.summary.tensors_by_type.values().sum::<usize>(),
        c.n_tensors
    );
    let (ours, theirs) = (
        std::fs::read(&out.path).unwrap(),
        std::fs::read(fixture(reference)).unwrap(),
    );
    assert_eq!(out.summary.n_bytes, theirs.len() as u64);
    assert!(c.n_tensor_bytes < out.summary.n_bytes);
    assert!(
        ours == theirs,
        "{folder}: same keys and tensors, yet the files differ"
    );
    c
}

#[test]
fn dense_target_reproduces_the_converters_gguf() {
    let c = reproduces("hf/dense", None, "dense.gguf");
    assert!(c.n_tensors > 80 && c.n_keys > 35, "{c:?}");
}

#[test]
fn assistant_reproduces_the_converters_gguf() {
    let c = reproduces("hf/assistant", None, "assistant.gguf");
    assert!(c.n_tensors > 40, "{c:?}");
}

#[test]
fn dflash_reproduces_the_converters_gguf() {
    let c = reproduces("hf/dflash", Some(&fixture("hf/dense")), "dflash.gguf");
    assert!(c.n_tensors > 20, "{c:?}");
}
