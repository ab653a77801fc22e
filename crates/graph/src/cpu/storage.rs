//! CPU buffers: f32/i32/f16 vectors for activations, inputs and states, and raw bytes (possibly
//! borrowed from a memory-mapped file) for weights of other types.

use std::borrow::Cow;

use half::f16;

use crate::backend::{HostBytes, HostData, TensorData};
use crate::error::{Error, Result};
use crate::op::DType;
use crate::shape::Shape;

/// The contents of a CPU buffer.
#[derive(Debug)]
pub(crate) enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
    F16(Vec<f16>),
    /// Weights of any other ggml type, used in place.
    Bytes(DType, HostBytes),
}

impl Data {
    pub fn as_f32(&self) -> Result<&[f32]> {
        match self {
            Data::F32(v) => Ok(v),
            other => Err(Error::Handle(format!(
                "expected an f32 buffer, found {}",
                other.kind()
            ))),
        }
    }

    pub fn as_i32(&self) -> Result<&[i32]> {
        match self {
            Data::I32(v) => Ok(v),
            other => Err(Error::Handle(format!(
                "expected an i32 buffer, found {}",
                other.kind()
            ))),
        }
    }

    pub fn as_f32_mut(&mut self) -> Result<&mut [f32]> {
        match self {
            Data::F32(v) => Ok(v),
            other => Err(Error::Handle(format!(
                "expected an f32 buffer, found {}",
                other.kind()
            ))),
        }
    }

    pub fn as_i32_mut(&mut self) -> Result<&mut [i32]> {
        match self {
            Data::I32(v) => Ok(v),
            other => Err(Error::Handle(format!(
                "expected an i32 buffer, found {}",
                other.kind()
            ))),
        }
    }

    /// All elements as f32 (borrowed when already f32; small weights otherwise).
    pub fn to_f32(&self) -> Result<Cow<'_, [f32]>> {
        Ok(match self {
            Data::F32(v) => Cow::Borrowed(v),
            Data::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            Data::I32(_) => return Err(Error::Handle("expected float data, found i32".into())),
            Data::Bytes(dtype, bytes) => Cow::Owned(
                gguf::quant::dequantize_to_vec(*dtype, bytes.as_slice())
                    .map_err(|e| Error::Handle(e.to_string()))?,
            ),
        })
    }

    /// Converts `n` elements starting at element `start` into `out` (any float storage).
    pub fn read_f32(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let n = out.len();
        match self {
            Data::F32(v) => out.copy_from_slice(&v[start..start + n]),
            Data::F16(v) => {
                for (o, x) in out.iter_mut().zip(&v[start..start + n]) {
                    *o = x.to_f32();
                }
            }
            Data::Bytes(dtype, bytes) => {
                let block = dtype.block_elems() as usize;
                let block_bytes = dtype.block_bytes() as usize;
                if !start.is_multiple_of(block) || !n.is_multiple_of(block) {
                    return Err(Error::Handle(format!(
                        "{dtype} rows must start and end on block boundaries"
                    )));
                }
                let b0 = start / block * block_bytes;
                let b1 = b0 + n / block * block_bytes;
                gguf::quant::dequantize(*dtype, &bytes.as_slice()[b0..b1], out)
                    .map_err(|e| Error::Handle(e.to_string()))?;
            }
            Data::I32(_) => return Err(Error::Handle("expected float data, found i32".into())),
        }
        Ok(())
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Data::F32(_) => "f32",
            Data::I32(_) => "i32",
            Data::F16(_) => "f16",
            Data::Bytes(..) => "weight bytes",
        }
    }
}

/// A buffer with its dtype and shape.
#[derive(Debug)]
pub(crate) struct CpuBuffer {
    pub dtype: DType,
    pub shape: Shape,
    pub data: Data,
}

fn byte_size(dtype: DType, shape: Shape) -> Result<usize> {
    dtype
        .bytes_for(shape.n_elems() as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| Error::Handle(format!("{dtype} {shape}: not a whole number of blocks")))
}

impl CpuBuffer {
    pub fn zeros(dtype: DType, shape: Shape) -> Result<CpuBuffer> {
        let n = shape.n_elems();
        let data = match dtype {
            DType::F32 => Data::F32(vec![0.0; n]),
            DType::I32 => Data::I32(vec![0; n]),
            DType::F16 => Data::F16(vec![f16::ZERO; n]),
            other => Data::Bytes(
                other,
                HostBytes::from_vec(vec![0; byte_size(other, shape)?]),
            ),
        };
        Ok(CpuBuffer { dtype, shape, data })
    }

    pub fn from_bytes(dtype: DType, shape: Shape, bytes: HostBytes) -> Result<CpuBuffer> {
        let expected = byte_size(dtype, shape)?;
        if bytes.len() != expected {
            return Err(Error::Handle(format!(
                "upload of {dtype} {shape}: expected {expected} bytes, got {}",
                bytes.len()
            )));
        }
        let raw = bytes.as_slice();
        let data = match dtype {
            DType::F32 => Data::F32(
                raw.as_chunks::<4>()
                    .0
                    .iter()
                    .map(|c| f32::from_le_bytes(*c))
                    .collect(),
            ),
            DType::I32 => Data::I32(
                raw.as_chunks::<4>()
                    .0
                    .iter()
                    .map(|c| i32::from_le_bytes(*c))
                    .collect(),
            ),
            other if gguf::quant::DEQUANTIZE_TYPES.contains(&other) => Data::Bytes(other, bytes),
            other => {
                return Err(Error::Handle(format!(
                    "the cpu backend cannot compute with {other} weights"
                )))
            }
        };
        Ok(CpuBuffer { dtype, shape, data })
    }

    pub fn write(&mut self, offset: usize, data: HostData<'_>) -> Result<()> {
        let n = self.shape.n_elems();
        if offset.checked_add(data.len()).is_none_or(|end| end > n) {
            return Err(Error::Handle(format!(
                "write of {} elements at {offset} into a {n}-element buffer",
                data.len()
            )));
        }
        match (&mut self.data, data) {
            (Data::F32(v), HostData::F32(src)) => {
                v[offset..offset + src.len()].copy_from_slice(src)
            }
            (Data::F16(v), HostData::F32(src)) => {
                for (o, x) in v[offset..].iter_mut().zip(src) {
                    *o = f16::from_f32(*x);
                }
            }
            (Data::I32(v), HostData::I32(src)) => {
                v[offset..offset + src.len()].copy_from_slice(src)
            }
            (d, _) => {
                return Err(Error::Handle(format!(
                    "cannot write that data into a {} buffer",
                    d.kind()
                )))
            }
        }
        Ok(())
    }

    pub fn read(&self) -> Result<TensorData> {
        Ok(match &self.data {
            Data::I32(v) => TensorData::I32(v[..self.shape.n_elems()].to_vec()),
            other => TensorData::F32(other.to_f32()?[..self.shape.n_elems()].to_vec()),
        })
    }
}
