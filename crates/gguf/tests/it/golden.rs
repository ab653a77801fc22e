//! Dequantization against gguf-py's on random blocks (`tests/data/quant_golden.gguf`, written
//! by gguf-py's own writer), Q8_0 and Q5_0 quantization bit-exact against ggml's reference rule, and
//! blocks built and decoded by hand.

use gguf::{quant, GgmlType, GgufFile};

use crate::testing::{fixture, rel_err, test_data};

#[test]
fn dequantize_matches_gguf_py_for_every_type() {
    let file = GgufFile::open(test_data("quant_golden.gguf")).unwrap();
    for &ty in quant::DEQUANTIZE_TYPES {
        if ty == GgmlType::F32 {
            continue;
        }
        let blocks = file
            .require_tensor(&format!("{}.blocks", ty.name()))
            .unwrap();
        assert_eq!(blocks.ggml_type(), ty);
        let expected = file.tensor_f32(&format!("{}.expected", ty.name())).unwrap();
        let out = quant::dequantize_to_vec(ty, file.tensor_data(blocks).unwrap()).unwrap();
        assert!(expected.iter().any(|&v| v != 0.0));
        let mismatches = out
            .iter()
            .zip(&expected)
            .filter(|(a, b)| (*a - *b).abs() > 1e-6 * b.abs().max(1e-3))
            .count();
        assert_eq!(
            mismatches,
            0,
            "{ty}: {mismatches} elements differ, rel err {:e}",
            rel_err(&out, &expected)
        );
    }
}

#[test]
fn q8_0_quantize_is_bit_exact_with_ggml_reference() {
    let file = GgufFile::open(test_data("quant_golden.gguf")).unwrap();
    let source = file.tensor_f32("Q8_0.source").unwrap();
    let expected = file
        .tensor_data(file.require_tensor("Q8_0.quantized").unwrap())
        .unwrap();
    assert_eq!(quant::quantize(GgmlType::Q8_0, &source).unwrap(), expected);
}

#[test]
fn q5_0_quantize_is_bit_exact_with_ggml_reference() {
    let file = GgufFile::open(test_data("quant_golden.gguf")).unwrap();
    let source = file.tensor_f32("Q5_0.source").unwrap();
    let expected = file
        .tensor_data(file.require_tensor("Q5_0.quantized").unwrap())
        .unwrap();
    let ours = quant::quantize(GgmlType::Q5_0, &source).unwrap();
    let differing = ours
        .chunks(22)
        .zip(expected.chunks(22))
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing,
        0,
        "{differing} of {} Q5_0 blocks differ",
        ours.len() / 22
    );
    assert_eq!(ours.len(), expected.len());
}

#[test]
fn q8_0_quantize_reproduces_the_converters_q8_0_fixture() {
    let f32_file = GgufFile::open(fixture("dense.gguf")).unwrap();
    let q8_file = GgufFile::open(fixture("dense.q8_0.gguf")).unwrap();
    let mut checked = 0;
    for info in q8_file
        .tensors()
        .iter()
        .filter(|t| t.ggml_type() == GgmlType::Q8_0)
    {
        let source = f32_file.tensor_f32(info.name()).unwrap();
        let ours = quant::quantize(GgmlType::Q8_0, &source).unwrap();
        assert!(
            ours == q8_file.tensor_data(info).unwrap(),
            "{}: our Q8_0 bytes differ from llama.cpp's converter",
            info.name()
        );
        checked += 1;
    }
    assert!(checked > 40);
}

fn f16(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

#[test]
fn hand_built_q4_0_block() {
    // d = 0.5; byte j holds nibbles (j, 15 − j): weight j = 0.5·(j − 8), weight j+16 = 0.5·(7 − j).
    let mut block = Vec::from(f16(0.5));
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let out = quant::dequantize_to_vec(GgmlType::Q4_0, &block).unwrap();
    for j in 0..16 {
        assert_eq!(out[j], 0.5 * (j as f32 - 8.0));
        assert_eq!(out[j + 16], 0.5 * (7.0 - j as f32));
    }
}

#[test]
fn hand_built_q8_0_block() {
    let mut block = Vec::from(f16(0.25));
    block.extend((0..32).map(|j| (j as i8 - 16) as u8));
    let out = quant::dequantize_to_vec(GgmlType::Q8_0, &block).unwrap();
    let expected: Vec<f32> = (0..32).map(|j| 0.25 * (j as f32 - 16.0)).collect();
    assert_eq!(out, expected);
}

#[test]
fn hand_built_q4_k_block() {
    // d = 1, dmin = 0.5. Sub-block j has scale j+1 and min 2j (both < 16 so they sit in the
    // low 6 bits with no high bits for j ≥ 4: bytes 8..12 hold (sc & 0xF) | (m & 0xF) << 4).
    let mut block = Vec::new();
    block.extend(f16(1.0));
    block.extend(f16(0.5));
    let mut scales = [0u8; 12];
    for j in 0..4 {
        scales[j] = j as u8 + 1;
        scales[j + 4] = 2 * j as u8;
    }
    for j in 4..8 {
        scales[j + 4] = (j as u8 + 1) | ((2 * j as u8) << 4);
    }
    block.extend(scales);
    // Every low nibble 3, every high nibble 10.
    block.extend([3u8 | (10 << 4); 128]);
    let out = quant::dequantize_to_vec(GgmlType::Q4_K, &block).unwrap();
    for j in 0..8 {
        let q = if j % 2 == 0 { 3.0 } else { 10.0 };
        let expected = (j as f32 + 1.0) * q - 0.5 * (2 * j) as f32;
        for &v in &out[32 * j..32 * (j + 1)] {
            assert_eq!(v, expected, "sub-block {j}");
        }
    }
}

#[test]
fn hand_built_q6_k_block() {
    // ql nibbles all 5, qh bits all 0b10 → q = 5 | 32 = 37 → q − 32 = 5.
    // scales[i] = i − 8, d = 0.5 (stored last): weight in sub-block i = 0.5·(i − 8)·5.
    let mut block = vec![0x55u8; 128];
    block.extend([0b1010_1010u8; 64]);
    block.extend((0..16).map(|i| (i as i8 - 8) as u8));
    block.extend(f16(0.5));
    let out = quant::dequantize_to_vec(GgmlType::Q6_K, &block).unwrap();
    for (k, &v) in out.iter().enumerate() {
        let i = k / 16;
        assert_eq!(v, 0.5 * (i as f32 - 8.0) * 5.0, "weight {k}");
    }
}

#[test]
fn dequantize_rejects_partial_blocks_and_unsupported_types() {
    let err = quant::dequantize_to_vec(GgmlType::Q4_K, &[0u8; 143]).unwrap_err();
    assert!(err.to_string().contains("multiple of 144"), "{err}");
    let err = quant::dequantize_to_vec(GgmlType::IQ2_XXS, &[0u8; 66]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "dequantize is not supported for ggml type IQ2_XXS"
    );
    let err = quant::quantize(GgmlType::Q4_K, &[0.5; 100]).unwrap_err();
    assert!(err.to_string().contains("multiple of 256"), "{err}");
    let mut out = [0.0f32; 31];
    let err = quant::dequantize(GgmlType::Q8_0, &[0u8; 34], &mut out).unwrap_err();
    assert!(err.to_string().contains("expected 32, found 31"), "{err}");
}
