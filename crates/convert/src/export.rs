//! The way back: a Gemma 4 target GGUF to a transformers checkpoint folder with f32 weights,
//! so that drafters can be trained against exactly the (possibly quantized) target a user
//! runs. Every tensor is dequantized by the `gguf` crate and stored under the transformers
//! name the converter maps from, with its dimensions in transformers' order, streamed into
//! `model.safetensors` one tensor at a time (memory: the largest tensor's f32 values); the JSON
//! files (`config.json`, tokenizer) come from a template folder, since a GGUF's metadata does
//! not hold everything transformers' config needs.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use gguf::GgufFile;

use crate::gemma4_names::{text_tensor_origin, ROPE_FREQS};
use crate::{Error, Result};

/// The JSON files copied from the template folder when present (`config.json` must be).
const TEMPLATE_FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// What [`export_target`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The folder written.
    pub dir: PathBuf,
    /// Tensors written to `model.safetensors`.
    pub n_tensors: usize,
    /// Template files copied.
    pub n_files: usize,
}

/// Writes `out_dir/model.safetensors` (every tensor of the Gemma 4 target `gguf_path`,
/// dequantized to f32, under its transformers name; tensors the converter derives from the
/// config are left out) and copies the JSON files of `template`
/// (a transformers folder of the same model: its `config.json` is required). A tensor with no
/// transformers name is an error naming it; nothing is half-written: the weights go to a
/// temporary file renamed into place at the end.
pub fn export_target(gguf_path: &Path, template: &Path, out_dir: &Path) -> Result<Exported> {
    let file = GgufFile::open(gguf_path).map_err(|e| Error::invalid(gguf_path, e.to_string()))?;
    let arch = file.architecture().unwrap_or_default();
    if arch != "gemma4" {
        return Err(Error::invalid(
            gguf_path,
            format!("general.architecture is '{arch}'; only Gemma 4 targets ('gemma4') export"),
        ));
    }
    if !template.join("config.json").is_file() {
        return Err(Error::invalid(
            template,
            "the template folder needs the model's config.json",
        ));
    }
    // Plan every tensor (name, shape, offsets) before writing, so a tensor without a
    // transformers name fails before anything is written.
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        // What torch's `save_file` writes, which transformers' loaders expect.
        serde_json::json!({ "format": "pt" }),
    );
    let mut planned = Vec::with_capacity(file.tensors().len());
    let mut offset = 0u64;
    for info in file.tensors() {
        if info.name() == ROPE_FREQS {
            // Derived from the config by the converter; no checkpoint holds it.
            continue;
        }
        let name = text_tensor_origin(info.name()).ok_or_else(|| {
            Error::invalid(
                gguf_path,
                format!("tensor '{}' has no transformers name", info.name()),
            )
        })?;
        let shape: Vec<u64> = info.shape().iter().rev().copied().collect();
        let end = offset + 4 * info.n_elems();
        header.insert(
            name,
            serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [offset, end] }),
        );
        planned.push(info);
        offset = end;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::invalid(gguf_path, e.to_string()))?;
    header.resize(header.len().next_multiple_of(8), b' ');

    // Stream: one dequantized tensor in memory at a time, into a temporary file.
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let weights = out_dir.join("model.safetensors");
    let partial = out_dir.join("model.safetensors.partial");
    let io = |e| Error::io(&partial, e);
    let mut w = BufWriter::new(File::create(&partial).map_err(io)?);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for info in &planned {
        let values = file
            .tensor_f32(info.name())
            .map_err(|e| Error::invalid(gguf_path, e.to_string()))?;
        for v in &values {
            w.write_all(&v.to_le_bytes()).map_err(io)?;
        }
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&partial, &weights).map_err(|e| Error::io(&weights, e))?;
    let mut n_files = 0;
    for name in TEMPLATE_FILES {
        let from = template.join(name);
        if from.is_file() {
            let to = out_dir.join(name);
            std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
            n_files += 1;
        }
    }
    Ok(Exported {
        dir: out_dir.to_path_buf(),
        n_tensors: planned.len(),
        n_files,
    })
}
