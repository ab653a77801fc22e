//! Turning checkpoint tensors into planned GGUF tensors, and checking the result against the
//! tensors (and shapes) the model's config implies, before anything is written.

use std::collections::HashMap;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::plan::{PlannedTensor, TensorSource};

/// What to do with a checkpoint tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mapped {
    /// Write it under this GGUF name.
    To(String),
    /// Leave it out (vision/audio towers, buffers the converter drops).
    Skip,
    /// No GGUF name is known for it.
    Unknown,
}

/// One tensor a model of a given config has.
#[derive(Clone, Debug)]
pub(crate) struct Expect {
    /// GGUF name.
    pub name: String,
    /// Shape, ggml order.
    pub shape: Vec<u64>,
    /// Whether the model cannot do without it.
    pub required: bool,
}

impl Expect {
    /// A tensor of shape `shape` (usize, ggml order).
    pub(crate) fn new(name: impl Into<String>, shape: &[usize], required: bool) -> Expect {
        Expect {
            name: name.into(),
            shape: shape.iter().map(|&d| d as u64).collect(),
            required,
        }
    }
}

/// Plans every checkpoint tensor `map` names, in checkpoint order. `embedding_rows` caps the
/// rows of `token_embd.weight` (the converter drops rows beyond the tokenizer's vocabulary).
pub(crate) fn map_tensors(
    ck: &Checkpoint,
    map: impl Fn(&str) -> Mapped,
    what: &str,
    embedding_rows: Option<u64>,
) -> Result<Vec<PlannedTensor>> {
    let mut out: Vec<PlannedTensor> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, src) in ck.tensors().iter().enumerate() {
        let name = match map(&src.name) {
            Mapped::Skip => continue,
            Mapped::Unknown => {
                return Err(
                    ck.tensor_error(src, format!("not a {what} tensor (no GGUF name for it)"))
                )
            }
            Mapped::To(name) => name,
        };
        if let Err(d) = &src.dtype {
            return Err(ck.tensor_error(
                src,
                format!("unsupported dtype {d} (expected F32, F16 or BF16)"),
            ));
        }
        if let Some(&other) = seen.get(&name) {
            return Err(ck.tensor_error(
                src,
                format!("maps to '{name}' as '{}' does", ck.tensors()[other].name),
            ));
        }
        seen.insert(name.clone(), index);
        let mut shape = src.ggml_shape();
        let mut n_elems = src.n_elems();
        if let (Some(rows), "token_embd.weight", [width, n_rows]) =
            (embedding_rows, name.as_str(), shape.as_mut_slice())
        {
            if *n_rows > rows {
                *n_rows = rows;
                n_elems = rows * *width;
            }
        }
        out.push(PlannedTensor::new(
            name,
            shape,
            TensorSource::Checkpoint { index, n_elems },
        ));
    }
    Ok(out)
}

/// Checks `tensors` against `expected`: each must be expected with the same shape, and every
/// required one must be there. `origin` names the checkpoint tensor a GGUF name comes from,
/// for the message about a missing one.
pub(crate) fn check_tensors(
    ck: &Checkpoint,
    tensors: &[PlannedTensor],
    expected: &[Expect],
    what: &str,
    origin: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let by_name: HashMap<&str, &Expect> = expected.iter().map(|e| (e.name.as_str(), e)).collect();
    for t in tensors {
        let TensorSource::Checkpoint { index, .. } = t.source else {
            continue;
        };
        let src = &ck.tensors()[index];
        let Some(e) = by_name.get(t.name.as_str()) else {
            return Err(ck.tensor_error(
                src,
                format!("'{}' is not part of a {what} with this config.json", t.name),
            ));
        };
        if e.shape != t.shape {
            return Err(ck.tensor_error(
                src,
                format!(
                    "shape {:?} does not match config.json, which implies {:?} (GGUF '{}' {:?})",
                    src.shape,
                    e.shape.iter().rev().collect::<Vec<_>>(),
                    t.name,
                    e.shape
                ),
            ));
        }
    }
    for e in expected.iter().filter(|e| e.required) {
        if !tensors.iter().any(|t| t.name == e.name) {
            let from = origin(&e.name).unwrap_or_else(|| e.name.clone());
            return Err(Error::invalid(
                ck.dir(),
                format!(
                    "tensor '{from}' is missing (GGUF '{}', which a {what} with this config.json needs)",
                    e.name
                ),
            ));
        }
    }
    Ok(())
}
