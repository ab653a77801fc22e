//! Mutation fuzzing of the reader over valid files: truncations, flipped bytes, huge counts and
//! lengths, random words, inserted and deleted bytes. Opening must return `Ok` or a typed error
//! with a message, never panic, hang or read out of bounds; an `Ok` file must then be fully
//! readable.
//!
//! `FUZZ_CASES` sets the number of cases (default 4,000; run millions locally with
//! `FUZZ_CASES=1000000 cargo test --release -p gguf --test it fuzz`).

use gguf::{quant, Array, GgmlType, GgufFile, GgufWriter, MetaValue, Value};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// A small valid file using every value type, nested and string arrays, and several tensors.
fn base_file() -> Vec<u8> {
    let mut w = GgufWriter::new(Vec::new());
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", "gemma4".into()),
        ("general.alignment", Value::U32(32)),
        ("a.u8", Value::U8(7)),
        ("a.i8", Value::I8(-7)),
        ("a.u16", Value::U16(700)),
        ("a.i16", Value::I16(-700)),
        ("a.u32", Value::U32(70000)),
        ("a.i32", Value::I32(-70000)),
        ("a.f32", Value::F32(1.5)),
        ("a.bool", Value::Bool(true)),
        ("a.u64", Value::U64(1 << 40)),
        ("a.i64", Value::I64(-(1 << 40))),
        ("a.f64", Value::F64(-2.25)),
        (
            "tokenizer.ggml.tokens",
            Value::Array(Array::String((0..24).map(|i| format!("tok{i}▁")).collect())),
        ),
        (
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2, 3]),
                Array::String(vec!["x".into(), "yz".into()]),
                Array::Array(vec![Array::Bool(vec![true, false])]),
            ])),
        ),
        (
            "a.bools",
            Value::Array(Array::Bool(vec![true, false, true])),
        ),
    ];
    for (k, v) in meta {
        w.add_metadata(k, v).unwrap();
    }
    let tensors = [
        ("token_embd.weight", GgmlType::Q8_0, vec![64u64, 2]),
        ("blk.0.attn_q.weight", GgmlType::Q4_K, vec![256, 1]),
        ("blk.0.ffn_down.weight", GgmlType::Q6_K, vec![256]),
        ("output_norm.weight", GgmlType::F32, vec![16]),
        ("blk.0.attn_v.weight", GgmlType::F16, vec![8, 2, 1, 1]),
    ];
    for (name, ty, shape) in &tensors {
        w.add_tensor(*name, *ty, shape).unwrap();
    }
    let mut data = w.write_header().unwrap();
    for (i, (name, ty, shape)) in tensors.iter().enumerate() {
        let n: u64 = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|j| ((j * 7 + i as u64) % 13) as f32 - 6.0)
            .collect();
        let bytes = match ty {
            GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlType::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => quant::quantize(*ty, &values).unwrap(),
        };
        data.write_tensor(name, &bytes).unwrap();
    }
    data.finish().unwrap()
}

#[derive(Clone, Debug)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Word64(usize, u64),
    Word32(usize, u32),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let huge = prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1u64 << 32),
        Just(1u64 << 40),
        Just(i64::MAX as u64 + 1),
        any::<u64>(),
        0u64..64,
    ];
    prop_oneof![
        any::<prop::sample::Index>().prop_map(|i| Mutation::Truncate(i.index(1 << 16))),
        (any::<prop::sample::Index>(), 1u8..=255)
            .prop_map(|(i, x)| Mutation::Flip(i.index(1 << 16), x)),
        (any::<prop::sample::Index>(), huge)
            .prop_map(|(i, v)| Mutation::Word64(i.index(1 << 16), v)),
        (any::<prop::sample::Index>(), any::<u32>())
            .prop_map(|(i, v)| Mutation::Word32(i.index(1 << 16), v)),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..9)
        )
            .prop_map(|(i, v)| Mutation::Insert(i.index(1 << 16), v)),
        (any::<prop::sample::Index>(), 1usize..16)
            .prop_map(|(i, n)| Mutation::Delete(i.index(1 << 16), n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        return;
    }
    let at = |i: usize| i % len.max(1);
    match *m {
        Mutation::Truncate(i) => bytes.truncate(at(i)),
        Mutation::Flip(i, x) => bytes[at(i)] ^= x,
        Mutation::Word64(i, v) if len >= 8 => {
            let p = at(i).min(len - 8);
            bytes[p..p + 8].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::Word32(i, v) if len >= 4 => {
            let p = at(i).min(len - 4);
            bytes[p..p + 4].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::Word64(..) | Mutation::Word32(..) => {}
        Mutation::Insert(i, ref v) => {
            let p = at(i);
            bytes.splice(p..p, v.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let p = at(i);
            bytes.drain(p..(p + n).min(len));
        }
    }
}

/// Reads everything an opened file offers; must not panic.
fn exercise(file: &GgufFile) {
    for (key, value) in file.metadata() {
        assert!(!key.is_empty() || file.get("").is_some());
        let owned = value.to_value();
        if let MetaValue::Array(array) = value {
            assert_eq!(array.iter().count(), array.len());
            if let Some(strings) = array.strings() {
                strings.for_each(|s| assert!(s.len() < 1 << 20));
            }
        }
        let _ = owned;
    }
    let _ = file.architecture();
    let _ = file.get_as::<usize>("a.u32");
    let _ = file.get_as::<Vec<bool>>("a.bools");
    for info in file.tensors() {
        let data = file
            .tensor_data(info)
            .expect("validated tensor data is in bounds");
        assert_eq!(data.len() as u64, info.n_bytes());
        if info.n_bytes() < 1 << 16 {
            let _ = file.tensor_f32(info.name());
        }
    }
}

#[test]
fn mutated_files_never_panic() {
    let base = base_file();
    exercise(&GgufFile::from_bytes(base.clone()).expect("base file is valid"));
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop::collection::vec(mutation(), 1..4);
    runner
        .run(&strategy, |mutations| {
            let mut bytes = base.clone();
            for m in &mutations {
                apply(&mut bytes, m);
            }
            match GgufFile::from_bytes(bytes) {
                Ok(file) => exercise(&file),
                Err(err) => {
                    let msg = err.to_string();
                    prop_assert!(!msg.is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn every_truncation_is_a_clean_error() {
    let base = base_file();
    for len in 0..base.len() {
        let mut bytes = base.clone();
        bytes.truncate(len);
        match GgufFile::from_bytes(bytes) {
            // Only trailing tensor padding may be cut without harm.
            Ok(file) => {
                assert!(
                    len as u64
                        >= file
                            .tensors()
                            .last()
                            .map_or(0, |t| t.file_offset() + t.n_bytes())
                );
                exercise(&file);
            }
            Err(err) => assert!(!err.to_string().is_empty()),
        }
    }
}
