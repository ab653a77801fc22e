//! GGUF files as llama.cpp writes them: parse, write, and convert ggml quantized blocks.
//!
//! - [`GgufFile`] opens a file (memory-mapped), validates the header, all metadata and every
//!   tensor info against the file length, and hands out typed metadata and borrowed tensor data.
//!   Opening costs O(metadata): no tensor byte is read, and arrays (a 262,144-token vocabulary)
//!   are validated in place and decoded lazily.
//! - [`GgufWriter`] streams a GGUF v3 file: metadata and tensor infos first, then each tensor's
//!   data in order.
//! - [`quant`] dequantizes F32/F16/BF16 and the Q4_0…Q8_0 and Q2_K…Q6_K blocks to f32, and
//!   quantizes f32 to Q8_0, Q5_0, Q4_K and Q6_K.
//!
//! Design decision: every size, count and offset read from a file is checked (with overflow-
//! checked arithmetic) before anything is sliced or allocated, so a hostile file produces an
//! [`Error`] naming the key, tensor or offset, never a panic or an out-of-bounds read.
//!
//! ```no_run
//! let file = gguf::GgufFile::open("model.gguf")?;
//! let n_layers: u32 = file.get_as("gemma4.block_count")?;
//! let embd = file.require_tensor("token_embd.weight")?;
//! println!("{n_layers} layers, token_embd {:?} {}", embd.shape(), embd.ggml_type());
//! # Ok::<(), gguf::Error>(())
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod error;
mod file;
mod ggml_type;
mod mmap;
mod parse;
pub mod quant;
mod tensor;
mod value;
mod writer;

pub use error::{Error, ErrorKind, Result};
pub use file::{FromMeta, GgufFile};
pub use ggml_type::GgmlType;
pub use parse::{DEFAULT_ALIGNMENT, MAX_ARRAY_NESTING, MAX_DIMS, MAX_TENSOR_NAME_BYTES};
pub use tensor::TensorInfo;
pub use value::{Array, ArrayElem, MetaArray, MetaArrayIter, MetaValue, Value, ValueType};
pub use writer::{GgufWriter, TensorDataWriter, WRITE_VERSION};
