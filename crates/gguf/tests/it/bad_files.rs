//! The corpus of hand-made malformed files (`tests/data/bad/`, made by `make_bad_files.py`):
//! each must fail with a typed error whose message names the problem and the file.

use gguf::{ErrorKind, GgufFile};

use crate::testing::test_data;

/// (file, a part of the expected message)
const CASES: &[(&str, &str)] = &[
    (
        "empty.gguf",
        "not a GGUF file: magic is [], expected \"GGUF\"",
    ),
    (
        "bad_magic.gguf",
        "not a GGUF file: magic is [47, 47, 4d, 4c]",
    ),
    (
        "version1.gguf",
        "unsupported GGUF version 1 (supported: 2 and 3) (GGUF v1",
    ),
    ("big_endian.gguf", "the file looks big-endian"),
    (
        "truncated_header.gguf",
        "header tensor count: needs 8 bytes at offset 8, but the file is 11 bytes long",
    ),
    (
        "huge_kv_count.gguf",
        "header metadata count: count 18446744073709551615 needs at least",
    ),
    (
        "huge_tensor_count.gguf",
        "header tensor count: count 4611686018427387904",
    ),
    (
        "huge_string_len.gguf",
        "metadata key #0: needs 18446744073709551615 bytes at offset 32",
    ),
    (
        "non_utf8_key.gguf",
        "metadata key #0: string at offset 32 is not valid UTF-8",
    ),
    (
        "unknown_value_type.gguf",
        "metadata key 'x': unknown metadata value type 13",
    ),
    (
        "bad_bool.gguf",
        "value of metadata key 'x': boolean byte is 2, expected 0 or 1",
    ),
    (
        "huge_array_len.gguf",
        "length of array key 'x': count 4611686018427387904",
    ),
    (
        "deep_nesting.gguf",
        "metadata key 'x': arrays nested deeper than 8 levels",
    ),
    (
        "duplicate_key.gguf",
        "metadata key 'x' appears more than once",
    ),
    (
        "bad_alignment.gguf",
        "general.alignment: 24 is not a non-zero power of two",
    ),
    (
        "alignment_wrong_type.gguf",
        "general.alignment: expected u32, found u64",
    ),
    (
        "tensor_too_many_dims.gguf",
        "tensor 'w': bad shape []: 5 dimensions",
    ),
    (
        "unknown_ggml_type.gguf",
        "tensor 'w': unknown ggml type id 4",
    ),
    (
        "tensor_offset_past_end.gguf",
        "tensor 'w': data at file offset 192 + 64 bytes exceeds the file length 192",
    ),
    (
        "misaligned_offset.gguf",
        "tensor 'w': data offset 4 is not a multiple of the alignment 32",
    ),
    ("shape_overflow.gguf", "element count overflows"),
    (
        "partial_block.gguf",
        "tensor 'w': bad shape [100]: ne0 = 100 is not a multiple of the Q4_K block size 256",
    ),
    ("duplicate_tensor.gguf", "tensor 'w' appears more than once"),
    (
        "non_utf8_tensor_name.gguf",
        "invalid name \"tensor #0\": not valid UTF-8",
    ),
    ("long_tensor_name.gguf", "tensor names are at most 64 bytes"),
    (
        "truncated_tensor_infos.gguf",
        "dimension 1 of tensor 'w': needs 8 bytes",
    ),
    (
        "offset_overflow.gguf",
        "tensor 'w': data at file offset 18446744073709551615",
    ),
];

#[test]
fn every_bad_file_gives_its_error() {
    let dir = test_data("bad");
    let n_files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("gguf".as_ref()))
        .count();
    assert_eq!(n_files, CASES.len(), "every corpus file has a case");
    for (name, expected) in CASES {
        let path = dir.join(name);
        let err = GgufFile::open(&path).expect_err(name);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&path.display().to_string()),
            "{name}: message does not name the file: {msg}"
        );
        assert!(
            msg.contains(expected),
            "{name}: got {msg:?}, expected {expected:?}"
        );
        assert!(!matches!(err.kind(), ErrorKind::Io(_)), "{name}: {msg}");
    }
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let err = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Io(_)));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/model.gguf: i/o error"),
        "{err}"
    );
}
