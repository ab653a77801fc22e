//! The tensors of a transformers checkpoint folder: one `model.safetensors` or shards
//! `model-0000N-of-0000M.safetensors` (with `model.safetensors.index.json`).
//!
//! Only the headers are read when opening; tensor data is read on demand, a range of elements
//! at a time, so a 60 GB checkpoint never has to fit in memory. Every offset and size in a
//! header is checked against the file's length before anything is read.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::hparams::read_json;

/// Largest safetensors header accepted (the format's own limit).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// The element type of a checkpoint tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dtype {
    /// IEEE f32.
    F32,
    /// IEEE f16.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    fn parse(name: &str) -> Option<Dtype> {
        match name {
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::Bf16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub(crate) fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

/// One tensor of the checkpoint (data not read).
#[derive(Clone, Debug)]
pub(crate) struct SourceTensor {
    /// Its name in the checkpoint.
    pub name: String,
    /// Its element type, or the unsupported type's name.
    pub dtype: std::result::Result<Dtype, String>,
    /// Its shape, torch order (outermost first).
    pub shape: Vec<u64>,
    part: usize,
    offset: u64,
    n_bytes: u64,
}

impl SourceTensor {
    /// Number of elements.
    pub(crate) fn n_elems(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The shape in ggml order (innermost first); a scalar becomes `[1]`.
    pub(crate) fn ggml_shape(&self) -> Vec<u64> {
        if self.shape.is_empty() {
            vec![1]
        } else {
            self.shape.iter().rev().copied().collect()
        }
    }
}

/// The tensors of a checkpoint folder, in the order llama.cpp's converter visits them: shards
/// in file-name order, tensors of a shard in name order.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    dir: PathBuf,
    parts: Vec<(PathBuf, File)>,
    tensors: Vec<SourceTensor>,
}

impl Checkpoint {
    /// Reads the safetensors headers of `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Checkpoint> {
        let part_names = part_names(dir)?;
        let mut parts = Vec::with_capacity(part_names.len());
        let mut tensors: Vec<SourceTensor> = Vec::new();
        for (idx, name) in part_names.iter().enumerate() {
            let path = dir.join(name);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let mut part_tensors = read_header(&path, &file, idx)?;
            part_tensors.sort_by(|a, b| a.name.cmp(&b.name));
            tensors.extend(part_tensors);
            parts.push((path, file));
        }
        let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::invalid(
                dir,
                format!("tensor '{}' is stored in two shards", w[0]),
            ));
        }
        let checkpoint = Checkpoint {
            dir: dir.to_path_buf(),
            parts,
            tensors,
        };
        checkpoint.check_index()?;
        Ok(checkpoint)
    }

    /// The folder.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every tensor, in visiting order.
    pub(crate) fn tensors(&self) -> &[SourceTensor] {
        &self.tensors
    }

    /// The file holding `tensor`.
    pub(crate) fn part_path(&self, tensor: &SourceTensor) -> &Path {
        &self.parts[tensor.part].0
    }

    /// An error about `tensor`, naming its file.
    pub(crate) fn tensor_error(&self, tensor: &SourceTensor, reason: impl AsRef<str>) -> Error {
        Error::invalid(
            self.part_path(tensor),
            format!("tensor '{}': {}", tensor.name, reason.as_ref()),
        )
    }

    /// The raw bytes of elements `first .. first + count` of `tensor`.
    pub(crate) fn read_bytes(
        &self,
        tensor: &SourceTensor,
        first: u64,
        count: u64,
    ) -> Result<Vec<u8>> {
        let dtype = tensor
            .dtype
            .as_ref()
            .map_err(|d| self.tensor_error(tensor, format!("unsupported dtype {d}")))?;
        let (start, len) = first
            .checked_mul(dtype.size())
            .zip(count.checked_mul(dtype.size()))
            .filter(|&(s, l)| s.checked_add(l).is_some_and(|end| end <= tensor.n_bytes))
            .ok_or_else(|| {
                self.tensor_error(tensor, format!("elements {first}+{count} are out of range"))
            })?;
        let len = usize::try_from(len)
            .map_err(|_| self.tensor_error(tensor, "a read does not fit in memory"))?;
        let (path, file) = &self.parts[tensor.part];
        let mut reader = file;
        let mut buf = vec![0u8; len];
        reader
            .seek(SeekFrom::Start(tensor.offset + start))
            .and_then(|_| reader.read_exact(&mut buf))
            .map_err(|e| Error::io(path, e))?;
        Ok(buf)
    }

    /// Elements `first .. first + count` of `tensor`, as f32.
    pub(crate) fn read_f32(
        &self,
        tensor: &SourceTensor,
        first: u64,
        count: u64,
    ) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(tensor, first, count)?;
        Ok(match tensor.dtype {
            Ok(Dtype::F32) => bytes
                .as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b))
                .collect(),
            Ok(Dtype::F16) => bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|b| half::f16::from_le_bytes(*b).to_f32())
                .collect(),
            Ok(Dtype::Bf16) => bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|b| half::bf16::from_le_bytes(*b).to_f32())
                .collect(),
            Err(_) => unreachable!("read_bytes rejects unsupported dtypes"),
        })
    }

    /// With `model.safetensors.index.json`: its weight map and the shards must name the same
    /// tensors.
    fn check_index(&self) -> Result<()> {
        let path = self.dir.join("model.safetensors.index.json");
        if !path.is_file() {
            return Ok(());
        }
        let index = read_json(&path)?;
        let Some(map) = index.get("weight_map").and_then(Value::as_object) else {
            return Err(Error::invalid(&path, "no 'weight_map' object"));
        };
        let stored: HashSet<&str> = self.tensors.iter().map(|t| t.name.as_str()).collect();
        if let Some(missing) = map.keys().find(|name| !stored.contains(name.as_str())) {
            return Err(Error::invalid(
                &path,
                format!("tensor '{missing}' is listed but no shard holds it"),
            ));
        }
        if let Some(extra) = self.tensors.iter().find(|t| !map.contains_key(&t.name)) {
            return Err(Error::invalid(
                &path,
                format!(
                    "tensor '{}' is in a shard but not in the weight map",
                    extra.name
                ),
            ));
        }
        Ok(())
    }
}

/// The shard files: those the index names, else every `model*.safetensors`, sorted.
fn part_names(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Err(Error::invalid(dir, "not a folder"));
    }
    let index = dir.join("model.safetensors.index.json");
    let mut names: Vec<String> = if index.is_file() {
        let value = read_json(&index)?;
        let Some(map) = value.get("weight_map").and_then(Value::as_object) else {
            return Err(Error::invalid(&index, "no 'weight_map' object"));
        };
        let mut files = Vec::new();
        for (tensor, file) in map {
            let Some(file) = file.as_str() else {
                return Err(Error::invalid(
                    &index,
                    format!("weight_map entry of '{tensor}' is not a file name"),
                ));
            };
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        files
    } else {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("model") && name.ends_with(".safetensors") {
                files.push(name);
            }
        }
        files
    };
    if names.is_empty() {
        let reason = if dir.join("pytorch_model.bin").exists() {
            "holds pytorch_model.bin only: PyTorch pickles are not supported, convert to safetensors first"
        } else {
            "no model*.safetensors file"
        };
        return Err(Error::invalid(dir, reason));
    }
    names.sort();
    Ok(names)
}

/// Parses the header of one shard.
fn read_header(path: &Path, file: &File, part: usize) -> Result<Vec<SourceTensor>> {
    let bad = |reason: String| Error::invalid(path, reason);
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = file;
    let mut len_bytes = [0u8; 8];
    reader.read_exact(&mut len_bytes).map_err(|_| {
        bad(format!(
            "{file_len} bytes: too short for a safetensors header"
        ))
    })?;
    let header_len = u64::from_le_bytes(len_bytes);
    let data_start = header_len
        .checked_add(8)
        .filter(|&s| s <= file_len && header_len <= MAX_HEADER_BYTES)
        .ok_or_else(|| {
            bad(format!(
                "header length {header_len} does not fit the file's {file_len} bytes"
            ))
        })?;
    let mut header = vec![0u8; header_len as usize];
    reader
        .read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let header: Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let Value::Object(entries) = header else {
        return Err(bad("header is not a JSON object".into()));
    };
    let data_len = file_len - data_start;
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let tbad = |reason: &str| bad(format!("tensor '{name}': {reason}"));
        let dtype_name = entry
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| tbad("no dtype"))?;
        let shape = entry
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| dims.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| tbad("shape is not an array of sizes"))?;
        let offsets = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|o| o.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| tbad("data_offsets is not a pair of offsets"))?;
        let (start, end) = (offsets[0], offsets[1]);
        if start > end || end > data_len {
            return Err(tbad(&format!(
                "data_offsets [{start}, {end}] exceed the {data_len} data bytes"
            )));
        }
        let dtype = Dtype::parse(dtype_name).ok_or_else(|| dtype_name.to_string());
        if let Ok(d) = dtype {
            let expected = shape
                .iter()
                .try_fold(d.size(), |acc, &dim| acc.checked_mul(dim));
            if expected != Some(end - start) {
                return Err(tbad(&format!(
                    "{} bytes for shape {shape:?} of {dtype_name}",
                    end - start
                )));
            }
        }
        tensors.push(SourceTensor {
            name,
            dtype,
            shape,
            part,
            offset: data_start + start,
            n_bytes: end - start,
        });
    }
    Ok(tensors)
}
