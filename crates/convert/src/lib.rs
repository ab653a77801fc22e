//! Transformers checkpoint folders to GGUF files in llama.cpp's layout, so that a model,
//! its MTP assistant and its DFlash drafter can be converted without Python.
//!
//! - [`convert`] reads a folder (`config.json`, `model*.safetensors`, the tokenizer files),
//!   recognises a Gemma 4 target (`Gemma4ForCausalLM`, `Gemma4ForConditionalGeneration`'s
//!   text model), a Gemma 4 MTP assistant (`Gemma4AssistantForCausalLM`) or a z-lab DFlash
//!   drafter (`dflash_config`), and writes the GGUF llama.cpp's `convert_hf_to_gguf.py`
//!   writes: the same metadata keys, values and order, the same tensor names, shapes, types
//!   and bytes.
//! - [`export_target`] goes back: a Gemma 4 target GGUF (any type) to a transformers folder
//!   with f32 weights, so drafters can be trained against the exact target users run.
//! - [`OutType`] picks the output type: `f32`, `f16`, `bf16`, `q8_0` as the converter's
//!   `--outtype`, or `q4_k_m`, llama.cpp's Q4_K_M mix applied in the same pass.
//!
//! Design decision: everything is checked before a byte is written — every config key used,
//! every tensor's name, dtype and shape against what specula's own loaders expect for that
//! config — and tensor data is streamed from the checkpoint a few megabytes at a time into a
//! temporary file that is renamed into place only after it re-opens cleanly. A bad folder
//! yields one [`Error`] naming the file and the key or tensor; a 60 GB checkpoint never has to
//! fit in memory.
//!
//! ```no_run
//! use convert::{convert, ConvertOptions, OutType};
//!
//! let options = ConvertOptions {
//!     input: "gemma-4-31B-it".into(),
//!     output: "gemma-4-31B-it-Q8_0.gguf".into(),
//!     out_type: OutType::Q8_0,
//!     target_dir: None,
//! };
//! let summary = convert(&options, &mut |_done, _total| {})?;
//! println!("{} keys, {:?}", summary.n_keys, summary.tensors_by_type);
//! # Ok::<(), convert::Error>(())
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod assistant;
mod checkpoint;
mod dflash;
mod error;
mod export;
mod gemma4;
mod gemma4_names;
mod general;
mod hparams;
mod kv;
mod mapping;
mod pipeline;
mod plan;
mod special_vocab;
mod target;
mod tokenizer;
mod types;
mod write;

pub use error::{Error, Result};
pub use export::{export_target, Exported};
pub use pipeline::{convert, ConvertOptions};
pub use types::OutType;
pub use write::Summary;
