//! Tensor infos: name, ggml type, shape and where the data lies.

use crate::GgmlType;

/// One tensor's description, checked against the file when it was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub(crate) name: String,
    pub(crate) ggml_type: GgmlType,
    pub(crate) shape: Vec<u64>,
    pub(crate) offset: u64,
    pub(crate) file_offset: u64,
    pub(crate) n_elems: u64,
    pub(crate) n_bytes: u64,
}

impl TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// The shape in ggml order: `shape()[0]` (ne0) is the innermost, contiguous dimension.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The data offset relative to the start of the data section, as stored in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The absolute offset of the data in the file.
    pub fn file_offset(&self) -> u64 {
        self.file_offset
    }

    /// Number of elements (the product of the shape; 1 for a tensor with no dimensions).
    pub fn n_elems(&self) -> u64 {
        self.n_elems
    }

    /// Size of the data in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Number of rows: elements divided by ne0 (1 when ne0 is 0 or absent).
    pub fn n_rows(&self) -> u64 {
        match self.shape.first() {
            Some(&ne0) if ne0 > 0 => self.n_elems / ne0,
            _ => 1,
        }
    }
}
