//! Write → read round trips: arbitrary metadata of every type and tensors of every ggml type
//! come back identical.

use gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};
use proptest::prelude::*;

fn finite_f32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("not NaN", |v| !v.is_nan())
}

fn finite_f64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("not NaN", |v| !v.is_nan())
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn array() -> impl Strategy<Value = Array> {
    let leaf = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Array::U8),
        prop::collection::vec(any::<i8>(), 0..8).prop_map(Array::I8),
        prop::collection::vec(any::<u16>(), 0..8).prop_map(Array::U16),
        prop::collection::vec(any::<i16>(), 0..8).prop_map(Array::I16),
        prop::collection::vec(any::<u32>(), 0..8).prop_map(Array::U32),
        prop::collection::vec(any::<i32>(), 0..8).prop_map(Array::I32),
        prop::collection::vec(finite_f32(), 0..8).prop_map(Array::F32),
        prop::collection::vec(any::<bool>(), 0..8).prop_map(Array::Bool),
        prop::collection::vec(text(), 0..8).prop_map(Array::String),
        prop::collection::vec(any::<u64>(), 0..8).prop_map(Array::U64),
        prop::collection::vec(any::<i64>(), 0..8).prop_map(Array::I64),
        prop::collection::vec(finite_f64(), 0..8).prop_map(Array::F64),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(Array::Array)
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        finite_f32().prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        text().prop_map(Value::String),
        array().prop_map(Value::Array),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        finite_f64().prop_map(Value::F64),
    ]
}

#[derive(Debug, Clone)]
struct TensorSpec {
    name: String,
    ty: GgmlType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn tensor(index: usize) -> impl Strategy<Value = TensorSpec> {
    (
        prop::sample::select(GgmlType::ALL),
        1u64..3,
        prop::collection::vec(1u64..4, 0..4),
        any::<u64>(),
    )
        .prop_map(move |(ty, ne0_blocks, rest, seed)| {
            let mut shape = vec![ne0_blocks * ty.block_elems()];
            shape.extend(rest);
            let n_elems: u64 = shape.iter().product();
            let n_bytes = ty.bytes_for(n_elems).unwrap() as usize;
            let mut state = seed;
            let data = (0..n_bytes)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            TensorSpec {
                name: format!("blk.{index}.weight"),
                ty,
                shape,
                data,
            }
        })
}

fn tensors() -> impl Strategy<Value = Vec<TensorSpec>> {
    (0usize..6).prop_flat_map(|n| (0..n).map(tensor).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn metadata_and_tensors_round_trip(
        entries in prop::collection::btree_map("[a-z_.]{1,16}", value(), 0..12),
        alignment in prop::sample::select(vec![None, Some(8u32), Some(16), Some(64), Some(256)]),
        specs in tensors(),
    ) {
        let mut writer = GgufWriter::new(Vec::new());
        if let Some(a) = alignment {
            writer.add_metadata("general.alignment", Value::U32(a)).unwrap();
        }
        for (key, value) in &entries {
            if key != "general.alignment" {
                writer.add_metadata(key.clone(), value.clone()).unwrap();
            }
        }
        for spec in &specs {
            writer.add_tensor(spec.name.clone(), spec.ty, &spec.shape).unwrap();
        }
        let mut data = writer.write_header().unwrap();
        for spec in &specs {
            data.write_tensor(&spec.name, &spec.data).unwrap();
        }
        let bytes = data.finish().unwrap();

        let file = GgufFile::from_bytes(bytes).unwrap();
        prop_assert_eq!(file.version(), 3);
        prop_assert_eq!(file.alignment(), u64::from(alignment.unwrap_or(32)));
        let read: Vec<(String, Value)> = file
            .metadata()
            .map(|(k, v)| (k.to_string(), v.to_value()))
            .filter(|(k, _)| k != "general.alignment")
            .collect();
        let written: Vec<(String, Value)> = entries
            .into_iter()
            .filter(|(k, _)| k != "general.alignment")
            .collect();
        prop_assert_eq!(read, written);
        prop_assert_eq!(file.tensors().len(), specs.len());
        for (info, spec) in file.tensors().iter().zip(&specs) {
            prop_assert_eq!(info.name(), &spec.name);
            prop_assert_eq!(info.ggml_type(), spec.ty);
            prop_assert_eq!(info.shape(), &spec.shape[..]);
            prop_assert_eq!(info.offset() % file.alignment(), 0);
            prop_assert_eq!(file.tensor_data(info).unwrap(), &spec.data[..]);
        }
    }
}

#[test]
fn writer_rejects_misuse_with_clear_errors() {
    let mut w = GgufWriter::new(Vec::new());
    w.add_metadata("a", Value::U8(1)).unwrap();
    let err = w.add_metadata("a", Value::U8(2)).unwrap_err();
    assert_eq!(err.to_string(), "metadata key 'a' appears more than once");
    let err = w
        .add_metadata("general.alignment", Value::U32(24))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("24 is not a non-zero power of two"),
        "{err}"
    );
    let err = w.add_tensor("t", GgmlType::Q4_K, &[100]).unwrap_err();
    assert!(
        err.to_string().contains("not a multiple of the block size"),
        "{err}"
    );
    w.add_tensor("t", GgmlType::F32, &[4]).unwrap();
    w.add_tensor("u", GgmlType::F32, &[2]).unwrap();
    let err = w.add_tensor("t", GgmlType::F32, &[4]).unwrap_err();
    assert_eq!(err.to_string(), "tensor 't' appears more than once");
    let mut data = w.write_header().unwrap();
    let err = data.write_tensor("u", &[0; 8]).unwrap_err();
    assert!(
        err.to_string().contains("expected data of tensor 't'"),
        "{err}"
    );
    let err = data.write_tensor("t", &[0; 15]).unwrap_err();
    assert!(err.to_string().contains("expected 16, found 15"), "{err}");
    data.write_tensor("t", &[0; 16]).unwrap();
    let err = data.finish().unwrap_err();
    assert!(err.to_string().contains("'u' was never written"), "{err}");
}

#[test]
fn typed_accessors_name_key_and_types() {
    let mut w = GgufWriter::new(Vec::new());
    w.add_metadata("general.architecture", "gemma4".into())
        .unwrap();
    w.add_metadata("n", Value::I32(-3)).unwrap();
    w.add_metadata("ids", Value::Array(Array::U32(vec![1, 2, 3])))
        .unwrap();
    let file = GgufFile::from_bytes(w.write_header().unwrap().finish().unwrap()).unwrap();
    assert_eq!(file.architecture().unwrap(), "gemma4");
    assert_eq!(file.get_as::<Vec<u32>>("ids").unwrap(), [1, 2, 3]);
    let err = file.get_as::<u32>("general.architecture").unwrap_err();
    assert_eq!(
        err.to_string(),
        "metadata key 'general.architecture': expected u32, found string"
    );
    let err = file.get_as::<usize>("n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "metadata key 'n': expected a non-negative integer, found i32"
    );
    let err = file.get_as::<Vec<i32>>("ids").unwrap_err();
    assert_eq!(
        err.to_string(),
        "metadata key 'ids': expected array of i32, found array of u32"
    );
    let err = file.get_as::<f32>("missing").unwrap_err();
    assert_eq!(err.to_string(), "metadata key 'missing' is missing");
    assert_eq!(file.get_opt::<f32>("missing").unwrap(), None);
    let err = file.require_tensor("token_embd.weight").unwrap_err();
    assert_eq!(err.to_string(), "tensor 'token_embd.weight' is missing");
}
