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

/// The output gets the permissions any new file gets (0o666 less the umask), not the owner-only
/// mode of the temporary file it was written as.
#[cfg(unix)]
#[test]
fn output_has_ordinary_file_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let out = convert_to_temp(
        &fixture("hf/dflash"),
        OutType::Q8_0,
        Some(&fixture("hf/dense")),
    );
    let plain = out.path.with_file_name("plain");
    std::fs::write(&plain, b"").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out.path), mode(&plain));
}
