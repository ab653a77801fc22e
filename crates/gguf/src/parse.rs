//! The GGUF header parser: every length, count, offset and size is checked against the file
//! before anything is sliced, with overflow-checked arithmetic.
//!
//! Parsing reads only the header, metadata and tensor infos (O(metadata)); tensor data is never
//! touched.

use std::collections::HashMap;

use crate::error::ErrorKind;
use crate::tensor::TensorInfo;
use crate::value::ValueType;
use crate::GgmlType;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;
/// Longest tensor name ggml stores, in bytes.
pub const MAX_TENSOR_NAME_BYTES: usize = 64;
/// Deepest nesting of arrays inside arrays the reader accepts.
pub const MAX_ARRAY_NESTING: usize = 8;

/// One metadata entry: its key, type and where its encoded value lies in the file.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub value_type: ValueType,
    pub value_start: usize,
    pub value_end: usize,
}

/// Everything the header says, with tensor infos checked against the file length.
#[derive(Debug)]
pub(crate) struct Header {
    pub version: u32,
    pub alignment: u64,
    pub entries: Vec<Entry>,
    pub entry_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
    pub data_offset: u64,
}

type Res<T> = std::result::Result<T, ErrorKind>;

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Res<&'a [u8]> {
        let truncated = || ErrorKind::Truncated {
            what: what(),
            offset: self.pos as u64,
            needed: n,
            file_len: self.bytes.len() as u64,
        };
        let n = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Res<[u8; N]> {
        let slice = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Res<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Res<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Reads a count and checks that `count` items of at least `min_item_bytes` each fit in
    /// the rest of the file, so no loop or allocation can be driven by a hostile count.
    fn count(&mut self, min_item_bytes: u64, what: &dyn Fn() -> String) -> Res<usize> {
        let count = self.u64(what)?;
        let min_bytes = count.saturating_mul(min_item_bytes);
        let remaining = self.remaining() as u64;
        if min_bytes > remaining {
            return Err(ErrorKind::CountTooLarge {
                what: what(),
                count,
                min_bytes,
                remaining,
            });
        }
        // Fits in the file, hence in usize.
        usize::try_from(count).map_err(|_| ErrorKind::CountTooLarge {
            what: what(),
            count,
            min_bytes,
            remaining,
        })
    }

    /// Reads a length-prefixed string and checks it is UTF-8.
    fn string(&mut self, what: &dyn Fn() -> String) -> Res<&'a str> {
        let len = self.u64(what)?;
        let offset = self.pos as u64;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| ErrorKind::InvalidUtf8 {
            what: what(),
            offset,
        })
    }

    /// Validates one encoded value of type `ty` and moves past it.
    fn skip_value(&mut self, ty: ValueType, depth: usize, key: &str) -> Res<()> {
        let what = || format!("value of metadata key '{key}'");
        match ty {
            ValueType::Bool => {
                let value = self.array::<1>(&what)?[0];
                if value > 1 {
                    return Err(ErrorKind::InvalidBool {
                        what: what(),
                        value,
                    });
                }
            }
            ValueType::String => {
                self.string(&what)?;
            }
            ValueType::Array => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(ErrorKind::NestingTooDeep {
                        key: key.to_string(),
                        max: MAX_ARRAY_NESTING,
                    });
                }
                let type_id = self.u32(&what)?;
                let elem_type =
                    ValueType::from_id(type_id).ok_or_else(|| ErrorKind::UnknownValueType {
                        what: format!("element type of array key '{key}'"),
                        id: type_id,
                    })?;
                let count_what = || format!("length of array key '{key}'");
                let len = self.count(elem_type.min_size() as u64, &count_what)?;
                match elem_type.fixed_size() {
                    Some(size) if elem_type != ValueType::Bool => {
                        // `count` proved len * size fits in the remaining bytes.
                        self.take((len * size) as u64, &what)?;
                    }
                    _ => {
                        for _ in 0..len {
                            self.skip_value(elem_type, depth + 1, key)?;
                        }
                    }
                }
            }
            fixed => {
                let size = fixed.fixed_size().unwrap_or(0) as u64;
                self.take(size, &what)?;
            }
        }
        Ok(())
    }
}

/// Rounds `offset` up to a multiple of `alignment` (a power of two).
pub(crate) fn align_up(offset: u64, alignment: u64) -> Option<u64> {
    offset
        .checked_add(alignment - 1)
        .map(|v| v & !(alignment - 1))
}

/// Parses and validates the header, metadata and tensor infos of a GGUF file.
pub(crate) fn parse_header(bytes: &[u8]) -> Res<Header> {
    let mut cur = Cursor { bytes, pos: 0 };
    let magic = bytes.get(..4).unwrap_or(bytes);
    if magic != MAGIC {
        return Err(ErrorKind::BadMagic {
            found: magic.to_vec(),
        });
    }
    cur.pos = 4;
    let version = cur.u32(&|| "header version".to_string())?;
    match version {
        2 | 3 => {}
        _ => {
            let hint = match version {
                1 => " (GGUF v1 used 32-bit counts; re-convert the model with a current llama.cpp)",
                0x0200_0000 | 0x0300_0000 => {
                    " (the file looks big-endian; only little-endian files are supported)"
                }
                _ => "",
            };
            return Err(ErrorKind::UnsupportedVersion { version, hint });
        }
    }
    // Bytes per tensor info at least: name length, n_dims, type, offset.
    let n_tensors = cur.u64(&|| "header tensor count".to_string())?;
    let kv_what = || "header metadata count".to_string();
    // Bytes per metadata entry at least: key length, value type, one byte of value.
    let n_kv = cur.count(8 + 4 + 1, &kv_what)?;
    let tensor_min = n_tensors.saturating_mul(8 + 4 + 4 + 8);
    if tensor_min > cur.remaining() as u64 {
        return Err(ErrorKind::CountTooLarge {
            what: "header tensor count".to_string(),
            count: n_tensors,
            min_bytes: tensor_min,
            remaining: cur.remaining() as u64,
        });
    }

    let mut entries = Vec::with_capacity(n_kv);
    let mut entry_index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = cur.string(&|| format!("metadata key #{i}"))?.to_string();
        let type_id = cur.u32(&|| format!("value type of metadata key '{key}'"))?;
        let value_type =
            ValueType::from_id(type_id).ok_or_else(|| ErrorKind::UnknownValueType {
                what: format!("metadata key '{key}'"),
                id: type_id,
            })?;
        let value_start = cur.pos;
        cur.skip_value(value_type, 0, &key)?;
        if entry_index.insert(key.clone(), entries.len()).is_some() {
            return Err(ErrorKind::DuplicateKey(key));
        }
        entries.push(Entry {
            key,
            value_type,
            value_start,
            value_end: cur.pos,
        });
    }

    let alignment = read_alignment(bytes, &entries, &entry_index)?;

    // `n_tensors` was checked against the remaining bytes above, so it fits in usize.
    let n_tensors = n_tensors as usize;
    let mut raw_infos = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name_what = || format!("name of tensor #{i}");
        let name = match cur.string(&name_what) {
            Err(ErrorKind::InvalidUtf8 { .. }) => Err(ErrorKind::InvalidName {
                name: format!("tensor #{i}"),
                reason: "not valid UTF-8".to_string(),
            }),
            other => other,
        }?
        .to_string();
        if name.len() > MAX_TENSOR_NAME_BYTES {
            return Err(ErrorKind::InvalidName {
                name,
                reason: format!("tensor names are at most {MAX_TENSOR_NAME_BYTES} bytes"),
            });
        }
        let n_dims = cur.u32(&|| format!("dimension count of tensor '{name}'"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(ErrorKind::BadShape {
                tensor: name,
                shape: Vec::new(),
                reason: format!("{n_dims} dimensions, ggml allows at most {MAX_DIMS}"),
            });
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            shape.push(cur.u64(&|| format!("dimension {d} of tensor '{name}'"))?);
        }
        let type_id = cur.u32(&|| format!("type of tensor '{name}'"))?;
        let offset = cur.u64(&|| format!("data offset of tensor '{name}'"))?;
        raw_infos.push((name, shape, type_id, offset));
    }

    let file_len = bytes.len() as u64;
    let data_offset = align_up(cur.pos as u64, alignment).ok_or_else(|| ErrorKind::Truncated {
        what: "data section".to_string(),
        offset: cur.pos as u64,
        needed: alignment,
        file_len,
    })?;

    let mut tensors = Vec::with_capacity(raw_infos.len());
    let mut tensor_index = HashMap::with_capacity(raw_infos.len());
    for (name, shape, type_id, offset) in raw_infos {
        let info = check_tensor(
            name,
            shape,
            type_id,
            offset,
            alignment,
            data_offset,
            file_len,
        )?;
        if tensor_index
            .insert(info.name.clone(), tensors.len())
            .is_some()
        {
            return Err(ErrorKind::DuplicateTensor(info.name));
        }
        tensors.push(info);
    }

    Ok(Header {
        version,
        alignment,
        entries,
        entry_index,
        tensors,
        tensor_index,
        data_offset,
    })
}

/// Reads `general.alignment` (u32, a non-zero power of two) or the default.
fn read_alignment(bytes: &[u8], entries: &[Entry], index: &HashMap<String, usize>) -> Res<u64> {
    let Some(&i) = index.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let entry = &entries[i];
    if entry.value_type != ValueType::U32 {
        return Err(ErrorKind::BadAlignment {
            reason: format!("expected u32, found {}", entry.value_type),
        });
    }
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[entry.value_start..entry.value_end]);
    let alignment = u32::from_le_bytes(buf);
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(ErrorKind::BadAlignment {
            reason: format!("{alignment} is not a non-zero power of two"),
        });
    }
    Ok(alignment.into())
}

/// Checks one tensor info against the rules and the file length.
fn check_tensor(
    name: String,
    shape: Vec<u64>,
    type_id: u32,
    offset: u64,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> Res<TensorInfo> {
    let Some(ggml_type) = GgmlType::from_id(type_id) else {
        return Err(ErrorKind::UnknownGgmlType {
            tensor: name,
            id: type_id,
        });
    };
    let bad_shape = |reason: String| ErrorKind::BadShape {
        tensor: name.clone(),
        shape: shape.clone(),
        reason,
    };
    let mut n_elems: u64 = 1;
    for &dim in &shape {
        if dim > i64::MAX as u64 {
            return Err(bad_shape(format!("dimension {dim} exceeds i64::MAX")));
        }
        n_elems = n_elems
            .checked_mul(dim)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad_shape("element count overflows".to_string()))?;
    }
    let ne0 = shape.first().copied().unwrap_or(1);
    if !ne0.is_multiple_of(ggml_type.block_elems()) {
        return Err(bad_shape(format!(
            "ne0 = {ne0} is not a multiple of the {ggml_type} block size {}",
            ggml_type.block_elems()
        )));
    }
    let n_bytes = ggml_type
        .bytes_for(n_elems)
        .ok_or_else(|| bad_shape("byte size overflows".to_string()))?;
    if !offset.is_multiple_of(alignment) {
        return Err(ErrorKind::MisalignedOffset {
            tensor: name,
            offset,
            alignment,
        });
    }
    let start = data_offset.checked_add(offset);
    let end = start.and_then(|s| s.checked_add(n_bytes));
    if end.is_none_or(|e| e > file_len) {
        return Err(ErrorKind::TensorOutOfBounds {
            tensor: name,
            offset: start.unwrap_or(u64::MAX),
            n_bytes,
            file_len,
        });
    }
    Ok(TensorInfo {
        name,
        ggml_type,
        shape,
        offset,
        file_offset: data_offset + offset,
        n_elems,
        n_bytes,
    })
}
