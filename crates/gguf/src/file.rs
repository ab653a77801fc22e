//! [`GgufFile`]: an open, validated GGUF file with typed metadata accessors and tensor views.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::mmap::Storage;
use crate::parse::{parse_header, Entry};
use crate::tensor::TensorInfo;
use crate::value::{decode_validated, ArrayElem, MetaArray, MetaValue};

/// An open GGUF file (v2 or v3).
///
/// Opening validates the header, every metadata value and every tensor info against the file
/// length, but reads no tensor data: the cost is proportional to the metadata. Tensor data is
/// then borrowed straight from the memory map.
#[derive(Debug)]
pub struct GgufFile {
    path: Option<PathBuf>,
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    entries: Vec<Entry>,
    entry_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens and memory-maps the file at `path`.
    ///
    /// The file must not be truncated or rewritten by another process while it is open (the
    /// usual contract of memory-mapped model loaders).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::from(e).with_path(path))?;
        let storage = Storage::map(&file).map_err(|e| Error::from(e).with_path(path))?;
        Self::from_storage(storage, Some(path.to_path_buf()))
    }

    /// Parses a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::from_storage(Storage::Owned(bytes), None)
    }

    fn from_storage(storage: Storage, path: Option<PathBuf>) -> Result<GgufFile> {
        let header = parse_header(&storage).map_err(|kind| {
            let err = Error::from(kind);
            match &path {
                Some(p) => err.with_path(p),
                None => err,
            }
        })?;
        Ok(GgufFile {
            path,
            storage,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            entries: header.entries,
            entry_index: header.entry_index,
            tensors: header.tensors,
            tensor_index: header.tensor_index,
        })
    }

    /// Wraps an error kind with this file's path.
    pub fn error(&self, kind: ErrorKind) -> Error {
        let err = Error::from(kind);
        match &self.path {
            Some(p) => err.with_path(p),
            None => err,
        }
    }

    /// The path the file was opened from (`None` for in-memory files).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.len() as u64
    }

    /// Number of metadata entries.
    pub fn metadata_len(&self) -> usize {
        self.entries.len()
    }

    /// Iterates over all metadata entries in file order.
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = (&str, MetaValue<'_>)> + '_ {
        self.entries
            .iter()
            .map(|entry| (entry.key.as_str(), self.decode(entry)))
    }

    fn decode(&self, entry: &Entry) -> MetaValue<'_> {
        let bytes = &self.storage[entry.value_start..entry.value_end];
        decode_validated(entry.value_type, bytes)
            .map(|(value, _)| value)
            .expect("metadata values are validated when the file is opened")
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<MetaValue<'_>> {
        let &i = self.entry_index.get(key)?;
        Some(self.decode(&self.entries[i]))
    }

    /// The value of `key` as type `T`; errors name the key, the expected and the found type.
    pub fn get_as<'a, T: FromMeta<'a>>(&'a self, key: &str) -> Result<T> {
        self.get_opt(key)?
            .ok_or_else(|| self.error(ErrorKind::MissingKey(key.to_string())))
    }

    /// Like [`GgufFile::get_as`], but `Ok(None)` when the key is absent.
    pub fn get_opt<'a, T: FromMeta<'a>>(&'a self, key: &str) -> Result<Option<T>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        T::from_meta(value).map(Some).ok_or_else(|| {
            self.error(ErrorKind::WrongType {
                key: key.to_string(),
                expected: T::EXPECTED.to_string(),
                found: value.type_description(),
            })
        })
    }

    /// `general.architecture`, which every GGUF file must have.
    pub fn architecture(&self) -> Result<&str> {
        self.get_as("general.architecture")
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor called `name`, or an error naming it.
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name)
            .ok_or_else(|| self.error(ErrorKind::MissingTensor(name.to_string())))
    }

    /// The raw bytes of a tensor's data, borrowed from the file.
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8]> {
        let out_of_bounds = || {
            self.error(ErrorKind::TensorOutOfBounds {
                tensor: info.name.clone(),
                offset: info.file_offset,
                n_bytes: info.n_bytes,
                file_len: self.file_len(),
            })
        };
        let start = usize::try_from(info.file_offset).map_err(|_| out_of_bounds())?;
        let len = usize::try_from(info.n_bytes).map_err(|_| out_of_bounds())?;
        let end = start.checked_add(len).ok_or_else(out_of_bounds)?;
        self.storage.get(start..end).ok_or_else(out_of_bounds)
    }

    /// Dequantizes (or converts) a whole tensor to f32.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.require_tensor(name)?;
        let data = self.tensor_data(info)?;
        crate::quant::dequantize_to_vec(info.ggml_type, data).map_err(|err| {
            self.error(ErrorKind::InTensor {
                tensor: name.to_string(),
                inner: Box::new(err),
            })
        })
    }
}

/// The whole file's bytes (what tensor views borrow from); lets the file own shared byte ranges
/// handed to backends without copying.
impl AsRef<[u8]> for GgufFile {
    fn as_ref(&self) -> &[u8] {
        &self.storage
    }
}

/// A type a metadata value can be read as through [`GgufFile::get_as`].
pub trait FromMeta<'a>: Sized {
    /// How the expected type is named in errors.
    const EXPECTED: &'static str;
    /// Converts the value, or `None` if it has another type.
    fn from_meta(value: MetaValue<'a>) -> Option<Self>;
}

macro_rules! from_meta_exact {
    ($($t:ty => $variant:ident, $name:literal);* $(;)?) => {$(
        impl<'a> FromMeta<'a> for $t {
            const EXPECTED: &'static str = $name;
            fn from_meta(value: MetaValue<'a>) -> Option<Self> {
                match value {
                    MetaValue::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    )*};
}

from_meta_exact! {
    u8 => U8, "u8";
    i8 => I8, "i8";
    u16 => U16, "u16";
    i16 => I16, "i16";
    u32 => U32, "u32";
    i32 => I32, "i32";
    f32 => F32, "f32";
    bool => Bool, "bool";
    u64 => U64, "u64";
    i64 => I64, "i64";
    f64 => F64, "f64";
    &'a str => String, "string";
    MetaArray<'a> => Array, "array";
}

/// Any non-negative integer value that fits, whatever integer type stores it (writers differ
/// between u32, i32 and u64 for counts).
impl<'a> FromMeta<'a> for usize {
    const EXPECTED: &'static str = "a non-negative integer";
    fn from_meta(value: MetaValue<'a>) -> Option<Self> {
        value.as_u64().and_then(|v| usize::try_from(v).ok())
    }
}

/// An array whose elements are all of type `T`.
impl<'a, T: ArrayElem> FromMeta<'a> for Vec<T> {
    const EXPECTED: &'static str = T::ARRAY_DESCRIPTION;
    fn from_meta(value: MetaValue<'a>) -> Option<Self> {
        match value {
            MetaValue::Array(array) => array.to_vec(),
            _ => None,
        }
    }
}
