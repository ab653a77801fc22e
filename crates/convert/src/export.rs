//! The way back: a Gemma 4 target GGUF to a transformers checkpoint folder with f32 weights,
//! so that drafters can be trained against exactly the (possibly quantized) target a user
//! runs. Every tensor is dequantized by the `gguf` crate and stored under the transformers
//! name the converter maps from, with its dimensions in transformers' order; the JSON files
//! (`config.json`, tokenizer) come from a template folder, since a GGUF's metadata does not
//! hold everything transformers' config needs.

use std::path::{Path, PathBuf};

use gguf::GgufFile;
use safetensors::tensor::{Dtype, TensorView};

use crate::gemma4_names::text_tensor_origin;
use crate::{Error, Result};

/// The JSON files copied from the template folder when present (`config.json` must be).
const TEMPLATE_FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Tensors the converter derives from `config.json` rather than copies from the checkpoint
/// (proportional RoPE's frequency factors); the export leaves them out.
const DERIVED_TENSORS: [&str; 1] = ["rope_freqs.weight"];

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
    let mut tensors = Vec::with_capacity(file.tensors().len());
    for info in file.tensors() {
        if DERIVED_TENSORS.contains(&info.name()) {
            continue;
        }
        let name = hf_name(info.name()).ok_or_else(|| {
            Error::invalid(
                gguf_path,
                format!("tensor '{}' has no transformers name", info.name()),
            )
        })?;
        let values = file
            .tensor_f32(info.name())
            .map_err(|e| Error::invalid(gguf_path, e.to_string()))?;
        let shape: Vec<usize> = info.shape().iter().rev().map(|&d| d as usize).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name, shape, bytes));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| Error::invalid(gguf_path, format!("tensor '{name}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let weights = out_dir.join("model.safetensors");
    let partial = out_dir.join("model.safetensors.partial");
    // The header metadata torch's `save_file` writes, which transformers' loaders expect.
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize_to_file(views, metadata, &partial)
        .map_err(|e| Error::invalid(&partial, e.to_string()))?;
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
        n_tensors: tensors.len(),
        n_files,
    })
}

/// The transformers name of a Gemma 4 target's GGUF tensor.
fn hf_name(gguf: &str) -> Option<String> {
    if gguf == "output.weight" {
        return Some("lm_head.weight".into());
    }
    text_tensor_origin(gguf)
}
