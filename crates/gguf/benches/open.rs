//! Opening cost: a synthetic file with a 262,144-token vocabulary (tokens, scores, types) and
//! 1,000 tensors, opened from disk (memory-mapped), and the vocabulary iterated.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};

const N_VOCAB: usize = 262_144;
const N_TENSORS: usize = 1_000;

fn synthetic_file() -> tempfile::NamedTempFile {
    let tmp = tempfile::NamedTempFile::new().expect("temp file");
    let mut w = GgufWriter::new(tmp.reopen().expect("reopen temp file"));
    w.add_metadata("general.architecture", "gemma4".into())
        .unwrap();
    let tokens = (0..N_VOCAB).map(|i| format!("▁tok{i}")).collect();
    w.add_metadata("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .unwrap();
    let scores = (0..N_VOCAB).map(|i| -(i as f32)).collect();
    w.add_metadata("tokenizer.ggml.scores", Value::Array(Array::F32(scores)))
        .unwrap();
    let types = vec![1i32; N_VOCAB];
    w.add_metadata("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .unwrap();
    for i in 0..N_TENSORS {
        w.add_tensor(format!("blk.{i}.ffn_up.weight"), GgmlType::Q4_K, &[256, 4])
            .unwrap();
    }
    let mut data = w.write_header().unwrap();
    let block = vec![0u8; 4 * 144];
    for i in 0..N_TENSORS {
        data.write_tensor(&format!("blk.{i}.ffn_up.weight"), &block)
            .unwrap();
    }
    data.finish().unwrap();
    tmp
}

fn bench_open(c: &mut Criterion) {
    let tmp = synthetic_file();
    let path = tmp.path();
    c.bench_function("open 262k vocab + 1000 tensors", |b| {
        b.iter(|| black_box(GgufFile::open(path).unwrap()))
    });
    c.bench_function("open + iterate 262k tokens", |b| {
        b.iter(|| {
            let file = GgufFile::open(path).unwrap();
            let tokens = file
                .get_as::<gguf::MetaArray>("tokenizer.ggml.tokens")
                .unwrap();
            let total: usize = tokens.strings().unwrap().map(str::len).sum();
            black_box(total)
        })
    });
}

criterion_group!(benches, bench_open);
criterion_main!(benches);
