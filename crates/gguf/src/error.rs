//! The crate's one error type.
//!
//! Every failure carries the file it concerns (when there is one) and an [`ErrorKind`] that
//! names the key, tensor or byte offset and the numbers involved.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::GgmlType;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from reading, writing or (de)quantizing GGUF data.
///
/// Displayed as `PATH: what went wrong` when the error concerns a file.
#[derive(Debug)]
pub struct Error {
    path: Option<PathBuf>,
    kind: ErrorKind,
}

impl Error {
    /// The file the error concerns, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Attaches the file the error concerns (kept if one is already set).
    pub(crate) fn with_path(mut self, path: &Path) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_path_buf());
        }
        self
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error { path: None, kind }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        ErrorKind::Io(err).into()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// The specific problem behind an [`Error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading or writing the underlying file failed.
    #[error("i/o error: {0}")]
    Io(#[source] std::io::Error),
    /// The file does not start with the bytes `GGUF`.
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes of the file (fewer if the file is shorter).
        found: Vec<u8>,
    },
    /// The header's version is not 2 or 3.
    #[error("unsupported GGUF version {version} (supported: 2 and 3){hint}")]
    UnsupportedVersion {
        /// The version number as read (little-endian).
        version: u32,
        /// Extra explanation for versions that look like a known case.
        hint: &'static str,
    },
    /// A read would go past the end of the file.
    #[error(
        "{what}: needs {needed} bytes at offset {offset}, but the file is {file_len} bytes long"
    )]
    Truncated {
        /// What was being read.
        what: String,
        /// Byte offset of the read.
        offset: u64,
        /// Number of bytes the read needs.
        needed: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// A count in the file cannot possibly fit in the remaining bytes.
    #[error("{what}: count {count} needs at least {min_bytes} bytes but only {remaining} remain")]
    CountTooLarge {
        /// What the count counts.
        what: String,
        /// The count as read.
        count: u64,
        /// The least number of bytes that many items occupy (saturating).
        min_bytes: u64,
        /// Bytes left in the file after the count.
        remaining: u64,
    },
    /// A string is not valid UTF-8.
    #[error("{what}: string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// What string it is.
        what: String,
        /// Byte offset of the string's bytes.
        offset: u64,
    },
    /// A metadata value type id is not one of the 13 GGUF value types.
    #[error("{what}: unknown metadata value type {id} (valid: 0..=12)")]
    UnknownValueType {
        /// Which value carries the type id.
        what: String,
        /// The id as read.
        id: u32,
    },
    /// A boolean value is a byte other than 0 or 1.
    #[error("{what}: boolean byte is {value}, expected 0 or 1")]
    InvalidBool {
        /// Which value.
        what: String,
        /// The byte as read.
        value: u8,
    },
    /// Arrays are nested deeper than the reader allows.
    #[error("metadata key '{key}': arrays nested deeper than {max} levels")]
    NestingTooDeep {
        /// The key whose value nests too deeply.
        key: String,
        /// The most levels allowed.
        max: usize,
    },
    /// The same metadata key appears twice.
    #[error("metadata key '{0}' appears more than once")]
    DuplicateKey(String),
    /// The same tensor name appears twice.
    #[error("tensor '{0}' appears more than once")]
    DuplicateTensor(String),
    /// A metadata key or tensor name breaks a GGUF rule (empty, too long, not UTF-8).
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The offending name (lossily decoded).
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// `general.alignment` is not a non-zero power of two of type u32.
    #[error("general.alignment: {reason}")]
    BadAlignment {
        /// What is wrong with it.
        reason: String,
    },
    /// A required metadata key is absent.
    #[error("metadata key '{0}' is missing")]
    MissingKey(String),
    /// A metadata value has another type than the one asked for.
    #[error("metadata key '{key}': expected {expected}, found {found}")]
    WrongType {
        /// The key asked for.
        key: String,
        /// The type the caller expected.
        expected: String,
        /// The type stored in the file.
        found: String,
    },
    /// A metadata value has the right type but an unusable value.
    #[error("metadata key '{key}': {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// A tensor's ggml type id is not a known ggml type.
    #[error("tensor '{tensor}': unknown ggml type id {id}")]
    UnknownGgmlType {
        /// The tensor.
        tensor: String,
        /// The id as read.
        id: u32,
    },
    /// A tensor's shape is not usable (too many dims, overflow, not a whole number of blocks).
    #[error("tensor '{tensor}': bad shape {shape:?}: {reason}")]
    BadShape {
        /// The tensor.
        tensor: String,
        /// The shape in ggml order (ne0 first).
        shape: Vec<u64>,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error(
        "tensor '{tensor}': data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedOffset {
        /// The tensor.
        tensor: String,
        /// The offset relative to the start of the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data range reaches past the end of the file.
    #[error(
        "tensor '{tensor}': data at file offset {offset} + {n_bytes} bytes exceeds the file length {file_len}"
    )]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Absolute file offset of the tensor's data (saturating).
        offset: u64,
        /// Size of the tensor's data.
        n_bytes: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// A tensor asked for by name is not in the file.
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    /// An operation is not implemented for a ggml type.
    #[error("{op} is not supported for ggml type {ty}")]
    Unsupported {
        /// The operation (`dequantize`, `quantize`).
        op: &'static str,
        /// The type.
        ty: GgmlType,
    },
    /// A buffer's length does not match what the operation needs.
    #[error("{what}: expected {expected}, found {found}")]
    LengthMismatch {
        /// What buffer, in which operation.
        what: String,
        /// The length needed.
        expected: u64,
        /// The length given.
        found: u64,
    },
    /// An error that concerns one tensor.
    #[error("tensor '{tensor}': {inner}")]
    InTensor {
        /// The tensor.
        tensor: String,
        /// What went wrong with it.
        #[source]
        inner: Box<ErrorKind>,
    },
    /// The writer was given tensor data out of the declared order, or not all of it.
    #[error("writer: {0}")]
    WriterOrder(String),
}
