//! Conversions to other types: `q8_0` reproduces the converter's Q8_0 file; `f16` and `bf16`
//! round every matrix exactly as the type says and keep 1-D tensors and norms in f32;
//! `q4_k_m` follows llama.cpp's Q4_K_M mix and stays close to the source.

use std::collections::BTreeMap;

use convert::OutType;
use gguf::{quant, GgmlType, GgufFile, Value};

use crate::testing::{assert_same_gguf, convert_to_temp, fixture, rel_err};

/// Whether llama.cpp's converter keeps a tensor in f32 whatever the output type.
fn stays_f32(name: &str, shape: &[u64]) -> bool {
    shape.len() < 2 || name.ends_with("_norm.weight")
}

#[test]
fn q8_0_reproduces_the_converters_q8_0_gguf() {
    let out = convert_to_temp(&fixture("hf/dense"), OutType::Q8_0, None);
    let c = assert_same_gguf(&out.path, &fixture("dense.q8_0.gguf"));
    eprintln!("dense q8_0: {c:?}");
    let reference = GgufFile::open(fixture("dense.gguf")).unwrap();
    let matrices = reference
        .tensors()
        .iter()
        .filter(|t| !stays_f32(t.name(), t.shape()))
        .count();
    assert_eq!(out.summary.tensors_by_type.get("Q8_0"), Some(&matrices));
    assert_eq!(
        std::fs::read(&out.path).unwrap(),
        std::fs::read(fixture("dense.q8_0.gguf")).unwrap()
    );
}

/// Converts `hf/dense` to `ty` and checks every tensor against `dense.gguf`: matrices in
/// `matrix_type` holding exactly `round(value)`, everything else f32 and unchanged. The
/// metadata equals `dense.gguf`'s but for `general.file_type`.
fn float_conversion(ty: OutType, matrix_type: GgmlType, file_type: u32, round: fn(f32) -> Vec<u8>) {
    let out = convert_to_temp(&fixture("hf/dense"), ty, None);
    let ours = GgufFile::open(&out.path).unwrap();
    let reference = GgufFile::open(fixture("dense.gguf")).unwrap();
    for (key, value) in reference.metadata() {
        let expected = if key == "general.file_type" {
            Value::U32(file_type)
        } else {
            value.to_value()
        };
        assert_eq!(ours.get(key).map(|v| v.to_value()), Some(expected), "{key}");
    }
    assert_eq!(ours.metadata_len(), reference.metadata_len());
    let mut n_matrices = 0;
    for r in reference.tensors() {
        let t = ours.require_tensor(r.name()).unwrap();
        assert_eq!(t.shape(), r.shape(), "{}", r.name());
        let data = ours.tensor_data(t).unwrap();
        if stays_f32(r.name(), r.shape()) {
            assert_eq!(t.ggml_type(), GgmlType::F32, "{}", r.name());
            assert_eq!(data, reference.tensor_data(r).unwrap(), "{}", r.name());
        } else {
            assert_eq!(t.ggml_type(), matrix_type, "{}", r.name());
            let expected: Vec<u8> = reference
                .tensor_f32(r.name())
                .unwrap()
                .into_iter()
                .flat_map(round)
                .collect();
            assert!(data == expected, "{}: not the rounded f32 values", r.name());
            n_matrices += 1;
        }
    }
    assert!(n_matrices > 40);
}

#[test]
fn f16_rounds_matrices_and_keeps_norms_in_f32() {
    float_conversion(OutType::F16, GgmlType::F16, 1, |v| {
        half::f16::from_f32(v).to_le_bytes().to_vec()
    });
}

#[test]
fn bf16_rounds_matrices_and_keeps_norms_in_f32() {
    float_conversion(OutType::Bf16, GgmlType::BF16, 32, |v| {
        half::bf16::from_f32(v).to_le_bytes().to_vec()
    });
}

/// llama.cpp's `use_more_bits`, written out for 6 layers: layers 2 and 5 of a kind get more
/// bits (5 / 8 = 0 layers at the start, 7·6/8 = 5 onwards at the end, every third from 0).
/// `attn_v` counts only the layers that have one (0..=4 here: the full layer 5 uses K as V), so
/// its picks are the 3rd and 5th `attn_v`: layers 2 and 4.
fn expected_q4_k_m_type(name: &str, shape: &[u64]) -> GgmlType {
    if stays_f32(name, shape) {
        return GgmlType::F32;
    }
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse::<usize>().ok());
    let row = shape[0];
    match (name, layer) {
        // Tied to the output head: Q6_K.
        ("token_embd.weight", _) => GgmlType::Q6_K,
        (n, Some(2 | 4)) if n.ends_with("attn_v.weight") => GgmlType::Q6_K,
        (n, Some(2 | 5)) if n.ends_with("ffn_down.weight") => GgmlType::Q6_K,
        // Rows of 128 are not whole Q4_K blocks: Q5_0.
        _ if !row.is_multiple_of(256) => GgmlType::Q5_0,
        _ => GgmlType::Q4_K,
    }
}

#[test]
fn q4_k_m_follows_llama_cpps_mix_and_stays_close_to_the_source() {
    let out = convert_to_temp(&fixture("hf/dense"), OutType::Q4KM, None);
    let ours = GgufFile::open(&out.path).unwrap();
    let reference = GgufFile::open(fixture("dense.gguf")).unwrap();
    assert_eq!(ours.get_as::<u32>("general.file_type").unwrap(), 15);
    let mut worst: BTreeMap<&str, f64> = BTreeMap::new();
    for r in reference.tensors() {
        let t = ours.require_tensor(r.name()).unwrap();
        let want = expected_q4_k_m_type(r.name(), r.shape());
        assert_eq!(t.ggml_type(), want, "{}", r.name());
        assert_eq!(t.shape(), r.shape(), "{}", r.name());
        let source = reference.tensor_f32(r.name()).unwrap();
        let back = quant::dequantize_to_vec(t.ggml_type(), ours.tensor_data(t).unwrap()).unwrap();
        let err = rel_err(&back, &source);
        let e = worst.entry(t.ggml_type().name()).or_insert(0.0);
        *e = e.max(err);
    }
    eprintln!("q4_k_m worst relative RMS error per type: {worst:?}");
    // Bounds from the quantizers' Gaussian figures (gguf quant_props), with margin.
    for (ty, bound) in [("F32", 0.0), ("Q6_K", 0.03), ("Q5_0", 0.06), ("Q4_K", 0.12)] {
        let err = worst
            .get(ty)
            .copied()
            .unwrap_or_else(|| panic!("no {ty} tensor"));
        assert!(err <= bound, "{ty}: relative error {err} > {bound}");
    }
}
