//! A streaming GGUF v3 writer.
//!
//! Metadata and tensor infos are declared first; [`GgufWriter::write_header`] then writes the
//! header and returns a [`TensorDataWriter`] that takes each tensor's data in declaration order,
//! so a multi-gigabyte file never has to be held in memory.

use std::collections::HashSet;
use std::io::{self, BufWriter, Read, Write};

use crate::error::{ErrorKind, Result};
use crate::parse::{align_up, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_TENSOR_NAME_BYTES};
use crate::value::{Array, Value};
use crate::GgmlType;

/// The version the writer produces.
pub const WRITE_VERSION: u32 = 3;

#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    ggml_type: GgmlType,
    shape: Vec<u64>,
    n_bytes: u64,
    offset: u64,
}

/// Collects metadata and tensor infos for a GGUF v3 file.
#[derive(Debug)]
pub struct GgufWriter<W: Write> {
    out: BufWriter<W>,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
    data_len: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Starts a file that will be written to `out`.
    pub fn new(out: W) -> Self {
        GgufWriter {
            out: BufWriter::with_capacity(1 << 20, out),
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            data_len: 0,
        }
    }

    /// Adds a metadata entry. `general.alignment` (u32, a power of two) also sets the alignment
    /// the writer uses; it must come before any tensor.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        if key.is_empty() || key.len() > 65535 {
            return Err(ErrorKind::InvalidName {
                name: key,
                reason: "metadata keys are 1 to 65535 bytes".to_string(),
            }
            .into());
        }
        if key == "general.alignment" {
            let Value::U32(alignment) = value else {
                return Err(ErrorKind::BadAlignment {
                    reason: format!("expected u32, found {}", value.value_type()),
                }
                .into());
            };
            if alignment == 0 || !alignment.is_power_of_two() {
                return Err(ErrorKind::BadAlignment {
                    reason: format!("{alignment} is not a non-zero power of two"),
                }
                .into());
            }
            if !self.tensors.is_empty() {
                return Err(ErrorKind::WriterOrder(
                    "general.alignment must be set before tensors are added".to_string(),
                )
                .into());
            }
            self.alignment = alignment.into();
        }
        if !self.keys.insert(key.clone()) {
            return Err(ErrorKind::DuplicateKey(key).into());
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Declares a tensor; its data must later be written in declaration order.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ggml_type: GgmlType,
        shape: &[u64],
    ) -> Result<()> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_TENSOR_NAME_BYTES {
            return Err(ErrorKind::InvalidName {
                name,
                reason: format!("tensor names are 1 to {MAX_TENSOR_NAME_BYTES} bytes"),
            }
            .into());
        }
        let bad_shape = |reason: &str| ErrorKind::BadShape {
            tensor: name.clone(),
            shape: shape.to_vec(),
            reason: reason.to_string(),
        };
        if shape.len() > MAX_DIMS {
            return Err(bad_shape("more than 4 dimensions").into());
        }
        let n_elems = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad_shape("element count overflows"))?;
        if !shape
            .first()
            .copied()
            .unwrap_or(1)
            .is_multiple_of(ggml_type.block_elems())
        {
            return Err(bad_shape("ne0 is not a multiple of the block size").into());
        }
        let n_bytes = ggml_type
            .bytes_for(n_elems)
            .ok_or_else(|| bad_shape("byte size overflows"))?;
        if self.names.contains(&name) {
            return Err(ErrorKind::DuplicateTensor(name).into());
        }
        let offset = self.data_len;
        self.data_len = offset
            .checked_add(n_bytes)
            .and_then(|end| align_up(end, self.alignment))
            .ok_or_else(|| bad_shape("data section size overflows"))?;
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            ggml_type,
            shape: shape.to_vec(),
            n_bytes,
            offset,
        });
        Ok(())
    }

    /// Writes the header, metadata and tensor infos, and the padding up to the data section.
    pub fn write_header(mut self) -> Result<TensorDataWriter<W>> {
        let mut pos = 0u64;
        let out = &mut self.out;
        let mut put = |bytes: &[u8]| -> io::Result<()> {
            pos += bytes.len() as u64;
            out.write_all(bytes)
        };
        put(&MAGIC)?;
        put(&WRITE_VERSION.to_le_bytes())?;
        put(&(self.tensors.len() as u64).to_le_bytes())?;
        put(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            put_str(&mut put, key)?;
            put(&value.value_type().id().to_le_bytes())?;
            put_value(&mut put, value)?;
        }
        for tensor in &self.tensors {
            put_str(&mut put, &tensor.name)?;
            put(&(tensor.shape.len() as u32).to_le_bytes())?;
            for dim in &tensor.shape {
                put(&dim.to_le_bytes())?;
            }
            put(&tensor.ggml_type.id().to_le_bytes())?;
            put(&tensor.offset.to_le_bytes())?;
        }
        let data_start = align_up(pos, self.alignment).unwrap_or(pos);
        write_zeros(&mut self.out, data_start - pos)?;
        Ok(TensorDataWriter {
            out: self.out,
            alignment: self.alignment,
            tensors: self.tensors,
            next: 0,
        })
    }
}

fn put_str(put: &mut impl FnMut(&[u8]) -> io::Result<()>, s: &str) -> io::Result<()> {
    put(&(s.len() as u64).to_le_bytes())?;
    put(s.as_bytes())
}

fn put_value(put: &mut impl FnMut(&[u8]) -> io::Result<()>, value: &Value) -> io::Result<()> {
    match value {
        Value::U8(v) => put(&v.to_le_bytes()),
        Value::I8(v) => put(&v.to_le_bytes()),
        Value::U16(v) => put(&v.to_le_bytes()),
        Value::I16(v) => put(&v.to_le_bytes()),
        Value::U32(v) => put(&v.to_le_bytes()),
        Value::I32(v) => put(&v.to_le_bytes()),
        Value::F32(v) => put(&v.to_le_bytes()),
        Value::Bool(v) => put(&[u8::from(*v)]),
        Value::String(s) => put_str(put, s),
        Value::Array(a) => put_array(put, a),
        Value::U64(v) => put(&v.to_le_bytes()),
        Value::I64(v) => put(&v.to_le_bytes()),
        Value::F64(v) => put(&v.to_le_bytes()),
    }
}

fn put_array(put: &mut impl FnMut(&[u8]) -> io::Result<()>, array: &Array) -> io::Result<()> {
    put(&array.elem_type().id().to_le_bytes())?;
    put(&(array.len() as u64).to_le_bytes())?;
    macro_rules! each_le {
        ($v:expr) => {{
            for x in $v {
                put(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match array {
        Array::U8(v) => put(v),
        Array::I8(v) => each_le!(v),
        Array::U16(v) => each_le!(v),
        Array::I16(v) => each_le!(v),
        Array::U32(v) => each_le!(v),
        Array::I32(v) => each_le!(v),
        Array::F32(v) => each_le!(v),
        Array::Bool(v) => {
            let bytes: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
            put(&bytes)
        }
        Array::String(v) => {
            for s in v {
                put_str(put, s)?;
            }
            Ok(())
        }
        Array::Array(v) => {
            for inner in v {
                put_array(put, inner)?;
            }
            Ok(())
        }
        Array::U64(v) => each_le!(v),
        Array::I64(v) => each_le!(v),
        Array::F64(v) => each_le!(v),
    }
}

fn write_zeros(out: &mut impl Write, mut n: u64) -> io::Result<()> {
    const ZEROS: [u8; 256] = [0; 256];
    while n > 0 {
        let chunk = n.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..chunk])?;
        n -= chunk as u64;
    }
    Ok(())
}

/// Takes each declared tensor's data, in declaration order, and pads it to the alignment.
#[derive(Debug)]
pub struct TensorDataWriter<W: Write> {
    out: BufWriter<W>,
    alignment: u64,
    tensors: Vec<PendingTensor>,
    next: usize,
}

impl<W: Write> TensorDataWriter<W> {
    /// The name of the tensor whose data comes next, if any.
    pub fn next_tensor(&self) -> Option<&str> {
        self.tensors.get(self.next).map(|t| t.name.as_str())
    }

    fn expect_next(&self, name: &str) -> Result<&PendingTensor> {
        match self.tensors.get(self.next) {
            Some(t) if t.name == name => Ok(t),
            Some(t) => Err(ErrorKind::WriterOrder(format!(
                "expected data of tensor '{}', got '{name}'",
                t.name
            ))
            .into()),
            None => Err(ErrorKind::WriterOrder(format!(
                "all declared tensors are written; '{name}' was not declared"
            ))
            .into()),
        }
    }

    /// Writes the data of tensor `name`, which must be the next declared one, in full.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let tensor = self.expect_next(name)?;
        if data.len() as u64 != tensor.n_bytes {
            return Err(ErrorKind::InTensor {
                tensor: name.to_string(),
                inner: Box::new(ErrorKind::LengthMismatch {
                    what: "data length".to_string(),
                    expected: tensor.n_bytes,
                    found: data.len() as u64,
                }),
            }
            .into());
        }
        self.out.write_all(data)?;
        self.finish_tensor()
    }

    /// Streams the data of tensor `name` from `reader`, which must yield exactly its size.
    pub fn write_tensor_from(&mut self, name: &str, reader: &mut impl Read) -> Result<()> {
        let n_bytes = self.expect_next(name)?.n_bytes;
        let copied = io::copy(&mut reader.take(n_bytes), &mut self.out)?;
        if copied != n_bytes {
            return Err(ErrorKind::InTensor {
                tensor: name.to_string(),
                inner: Box::new(ErrorKind::LengthMismatch {
                    what: "data read".to_string(),
                    expected: n_bytes,
                    found: copied,
                }),
            }
            .into());
        }
        self.finish_tensor()
    }

    fn finish_tensor(&mut self) -> Result<()> {
        let tensor = &self.tensors[self.next];
        let end = tensor.offset + tensor.n_bytes;
        let padded = align_up(end, self.alignment).unwrap_or(end);
        write_zeros(&mut self.out, padded - end)?;
        self.next += 1;
        Ok(())
    }

    /// Checks every declared tensor was written, flushes, and returns the output.
    pub fn finish(self) -> Result<W> {
        if let Some(missing) = self.tensors.get(self.next) {
            return Err(ErrorKind::WriterOrder(format!(
                "data of tensor '{}' was never written",
                missing.name
            ))
            .into());
        }
        self.out
            .into_inner()
            .map_err(|e| ErrorKind::Io(e.into_error()).into())
    }
}
