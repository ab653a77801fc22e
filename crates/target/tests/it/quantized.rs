//! The quantized path is checked against its own weights dequantized to f32 (tiny random
//! models amplify quantization noise, so transformers is not the reference here).

use std::sync::Arc;

use gguf::{GgmlType, GgufFile, GgufWriter};
use target::{LogitRows, Target, TargetOptions};

use crate::testing::{assert_close, fixture, load_cpu, Reference};

/// `dense.q8_0.gguf` rewritten with every tensor dequantized to F32.
fn dequantized_copy() -> Vec<u8> {
    let q = GgufFile::open(fixture("dense.q8_0.gguf")).unwrap();
    let mut w = GgufWriter::new(Vec::new());
    for (key, value) in q.metadata() {
        w.add_metadata(key, value.to_value()).unwrap();
    }
    for info in q.tensors() {
        w.add_tensor(info.name(), GgmlType::F32, info.shape())
            .unwrap();
    }
    let mut data = w.write_header().unwrap();
    for info in q.tensors() {
        let values = q.tensor_f32(info.name()).unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.write_tensor(info.name(), &bytes).unwrap();
    }
    data.finish().unwrap()
}

#[test]
fn q8_0_logits_equal_the_dequantized_f32_path() {
    let r = Reference::open("dense.ref.safetensors");
    let ids = r.tokens("input_ids");
    let options = TargetOptions {
        n_ctx: 64,
        max_batch: 64,
        ..Default::default()
    };
    let mut q = load_cpu("dense.q8_0.gguf", &options);
    let out_q = q.forward(&ids, LogitRows::All, &[], false).unwrap();
    let f = Arc::new(GgufFile::from_bytes(dequantized_copy()).unwrap());
    let mut d = Target::load(
        f,
        Box::new(graph::CpuBackend::new()),
        &options,
        &mut |_, _| {},
    )
    .unwrap();
    let out_d = d.forward(&ids, LogitRows::All, &[], false).unwrap();
    assert_close(
        "q8_0 vs dequantized f32",
        &out_q.logits,
        &out_d.logits,
        1e-4,
    );
    // And the quantized model is a different model from the f32 reference, as documented.
    let (_, reference) = r.f32("logits");
    assert!(crate::testing::rel_err(&out_q.logits, &reference) > 1e-3);
}
