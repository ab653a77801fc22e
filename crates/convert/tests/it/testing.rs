//! Helpers: fixture paths, converting into a temporary folder, comparing two GGUF files.

use std::path::{Path, PathBuf};

use convert::{convert, ConvertOptions, OutType, Summary};
use gguf::{GgufFile, Value};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A golden file or folder in the repo's `fixtures/`; panics with a clear message if absent.
pub fn fixture(name: &str) -> PathBuf {
    let path = repo_root().join("fixtures").join(name);
    assert!(
        path.exists(),
        "fixture {} is missing: copy it unchanged from ../shared/fixtures",
        path.display()
    );
    path
}

/// A converted file in a temporary folder (removed when the first value drops).
pub struct Converted {
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub summary: Summary,
}

/// Converts `input` with `out_type` (and a DFlash drafter's `target_dir`).
pub fn convert_to_temp(input: &Path, out_type: OutType, target_dir: Option<&Path>) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let options = ConvertOptions {
        input: input.to_path_buf(),
        output: path.clone(),
        out_type,
        target_dir: target_dir.map(Path::to_path_buf),
    };
    let summary = convert(&options, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    Converted {
        _dir: dir,
        path,
        summary,
    }
}

/// The result of [`assert_same_gguf`].
#[derive(Debug)]
pub struct Comparison {
    pub n_keys: usize,
    pub n_tensors: usize,
    pub n_tensor_bytes: u64,
}

fn entries(file: &GgufFile) -> Vec<(String, Value)> {
    file.metadata()
        .map(|(k, v)| (k.to_string(), v.to_value()))
        .collect()
}

/// Asserts that `ours` holds the same metadata (keys, types, values, order) and the same
/// tensors (names, order, shapes, types, bytes) as `reference`.
pub fn assert_same_gguf(ours: &Path, reference: &Path) -> Comparison {
    let a = GgufFile::open(ours).unwrap();
    let b = GgufFile::open(reference).unwrap();
    let (ka, kb) = (entries(&a), entries(&b));
    let missing: Vec<&str> = kb
        .iter()
        .filter(|(k, _)| !ka.iter().any(|(x, _)| x == k))
        .map(|(k, _)| k.as_str())
        .collect();
    let extra: Vec<&str> = ka
        .iter()
        .filter(|(k, _)| !kb.iter().any(|(x, _)| x == k))
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "keys missing {missing:?}, extra {extra:?}"
    );
    for (key, value) in &kb {
        let ours = &ka.iter().find(|(k, _)| k == key).unwrap().1;
        assert!(
            ours == value,
            "key {key}: ours {}, reference {}",
            short(ours),
            short(value)
        );
    }
    let order_a: Vec<&str> = ka.iter().map(|(k, _)| k.as_str()).collect();
    let order_b: Vec<&str> = kb.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(order_a, order_b, "key order differs");

    let names_a: Vec<&str> = a.tensors().iter().map(|t| t.name()).collect();
    let names_b: Vec<&str> = b.tensors().iter().map(|t| t.name()).collect();
    assert_eq!(names_a, names_b, "tensor names or order differ");
    let mut n_tensor_bytes = 0;
    for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(ta.shape(), tb.shape(), "{}: shape", tb.name());
        assert_eq!(ta.ggml_type(), tb.ggml_type(), "{}: type", tb.name());
        let (da, db) = (a.tensor_data(ta).unwrap(), b.tensor_data(tb).unwrap());
        let first = da.iter().zip(db).position(|(x, y)| x != y);
        assert!(
            da.len() == db.len() && first.is_none(),
            "{}: data differs (first at byte {first:?}, lengths {} vs {})",
            tb.name(),
            da.len(),
            db.len()
        );
        n_tensor_bytes += db.len() as u64;
    }
    Comparison {
        n_keys: kb.len(),
        n_tensors: names_b.len(),
        n_tensor_bytes,
    }
}

fn short(v: &Value) -> String {
    let s = format!("{v:?}");
    if s.len() > 200 {
        format!("{}…", &s[..200])
    } else {
        s
    }
}

/// ‖out − ref‖ / ‖ref‖.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        num += (f64::from(o) - f64::from(r)).powi(2);
        den += f64::from(r).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}
