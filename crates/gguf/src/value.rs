//! Metadata values: the 13 GGUF value types, borrowed views into a file, and owned values for
//! writing.
//!
//! Reading never copies an array: [`MetaArray`] is a view of the array's bytes inside the file,
//! validated when the file was opened, and decoded element by element on iteration. That keeps
//! opening a file with a 262,144-token vocabulary cheap.

use std::fmt;

/// The type of a metadata value, with its GGUF id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `u8` (id 0).
    U8,
    /// `i8` (id 1).
    I8,
    /// `u16` (id 2).
    U16,
    /// `i16` (id 3).
    I16,
    /// `u32` (id 4).
    U32,
    /// `i32` (id 5).
    I32,
    /// `f32` (id 6).
    F32,
    /// Boolean stored as one byte, 0 or 1 (id 7).
    Bool,
    /// UTF-8 string with a `u64` length prefix (id 8).
    String,
    /// Array: element type, `u64` length, elements (id 9).
    Array,
    /// `u64` (id 10).
    U64,
    /// `i64` (id 11).
    I64,
    /// `f64` (id 12).
    F64,
}

impl ValueType {
    /// The type with this GGUF id.
    pub fn from_id(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// The GGUF id of the type.
    pub fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    /// Lower-case name used in messages and JSON (`"u32"`, `"string"`).
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// Encoded size of one value of a fixed-size type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        Some(match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 8,
            ValueType::String | ValueType::Array => return None,
        })
    }

    /// The smallest number of bytes one encoded value of this type can occupy.
    pub(crate) fn min_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            fixed => fixed.fixed_size().unwrap_or(1),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value borrowed from an open file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetaValue<'a> {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    String(&'a str),
    /// Array (decoded lazily).
    Array(MetaArray<'a>),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl<'a> MetaValue<'a> {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// A description of the type for messages: `"u32"`, or `"array of string"` for arrays.
    pub fn type_description(&self) -> String {
        match self {
            MetaValue::Array(a) => format!("array of {}", a.elem_type()),
            other => other.value_type().name().to_string(),
        }
    }

    /// The value as a non-negative integer, whatever integer type stores it.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, from `f32` or `f64` storage.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// Copies the value into an owned [`Value`].
    pub fn to_value(&self) -> Value {
        match *self {
            MetaValue::U8(v) => Value::U8(v),
            MetaValue::I8(v) => Value::I8(v),
            MetaValue::U16(v) => Value::U16(v),
            MetaValue::I16(v) => Value::I16(v),
            MetaValue::U32(v) => Value::U32(v),
            MetaValue::I32(v) => Value::I32(v),
            MetaValue::F32(v) => Value::F32(v),
            MetaValue::Bool(v) => Value::Bool(v),
            MetaValue::String(v) => Value::String(v.to_string()),
            MetaValue::Array(a) => Value::Array(a.to_array()),
            MetaValue::U64(v) => Value::U64(v),
            MetaValue::I64(v) => Value::I64(v),
            MetaValue::F64(v) => Value::F64(v),
        }
    }
}

/// A view of an array's encoded elements inside an open file.
///
/// Only the parser builds one, after checking that `bytes` holds exactly `len` well-formed
/// elements of `elem_type`; decoding therefore cannot fail.
#[derive(Clone, Copy, PartialEq)]
pub struct MetaArray<'a> {
    elem_type: ValueType,
    len: usize,
    bytes: &'a [u8],
}

impl fmt::Debug for MetaArray<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MetaArray({} x {})", self.len, self.elem_type)
    }
}

impl<'a> MetaArray<'a> {
    /// Builds a view; `bytes` must have been validated to hold `len` elements of `elem_type`.
    pub(crate) fn new_validated(elem_type: ValueType, len: usize, bytes: &'a [u8]) -> Self {
        MetaArray {
            elem_type,
            len,
            bytes,
        }
    }

    /// The type of every element.
    pub fn elem_type(&self) -> ValueType {
        self.elem_type
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Iterates over the elements.
    pub fn iter(&self) -> MetaArrayIter<'a> {
        MetaArrayIter {
            elem_type: self.elem_type,
            remaining: self.len,
            bytes: self.bytes,
        }
    }

    /// Iterates over the elements of a string array; `None` if the elements are not strings.
    pub fn strings(&self) -> Option<impl ExactSizeIterator<Item = &'a str> + 'a> {
        if self.elem_type != ValueType::String {
            return None;
        }
        Some(self.iter().map(|v| match v {
            MetaValue::String(s) => s,
            // The element type was checked above; every element decodes as a string.
            _ => "",
        }))
    }

    /// The elements as a vector of `T`; `None` if the element type is not `T`'s.
    pub fn to_vec<T: ArrayElem>(&self) -> Option<Vec<T>> {
        if self.elem_type != T::VALUE_TYPE {
            return None;
        }
        Some(
            self.bytes
                .chunks_exact(T::SIZE)
                .map(T::from_le_bytes)
                .collect(),
        )
    }

    /// Copies the array into an owned [`Array`].
    pub fn to_array(&self) -> Array {
        // `to_vec` succeeds because each arm asks for the element type it matched.
        fn vec_or_empty<T: ArrayElem>(array: &MetaArray<'_>) -> Vec<T> {
            array.to_vec().unwrap_or_default()
        }
        match self.elem_type {
            ValueType::U8 => Array::U8(vec_or_empty(self)),
            ValueType::I8 => Array::I8(vec_or_empty(self)),
            ValueType::U16 => Array::U16(vec_or_empty(self)),
            ValueType::I16 => Array::I16(vec_or_empty(self)),
            ValueType::U32 => Array::U32(vec_or_empty(self)),
            ValueType::I32 => Array::I32(vec_or_empty(self)),
            ValueType::F32 => Array::F32(vec_or_empty(self)),
            ValueType::Bool => Array::Bool(vec_or_empty(self)),
            ValueType::U64 => Array::U64(vec_or_empty(self)),
            ValueType::I64 => Array::I64(vec_or_empty(self)),
            ValueType::F64 => Array::F64(vec_or_empty(self)),
            ValueType::String => Array::String(
                self.strings()
                    .map(|it| it.map(str::to_string).collect())
                    .unwrap_or_default(),
            ),
            ValueType::Array => Array::Array(
                self.iter()
                    .filter_map(|v| match v {
                        MetaValue::Array(inner) => Some(inner.to_array()),
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }
}

/// Iterator over a [`MetaArray`]'s elements.
#[derive(Clone, Debug)]
pub struct MetaArrayIter<'a> {
    elem_type: ValueType,
    remaining: usize,
    bytes: &'a [u8],
}

impl<'a> Iterator for MetaArrayIter<'a> {
    type Item = MetaValue<'a>;

    fn next(&mut self) -> Option<MetaValue<'a>> {
        if self.remaining == 0 {
            return None;
        }
        let (value, rest) = decode_validated(self.elem_type, self.bytes)?;
        self.bytes = rest;
        self.remaining -= 1;
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for MetaArrayIter<'_> {}

/// Decodes one value of type `ty` from the front of already validated bytes.
///
/// Returns `None` only if the bytes were not validated (a bug), never for parsed files.
pub(crate) fn decode_validated(ty: ValueType, bytes: &[u8]) -> Option<(MetaValue<'_>, &[u8])> {
    fn split<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
        let (head, rest) = bytes.split_first_chunk::<N>()?;
        Some((*head, rest))
    }
    fn split_u64(bytes: &[u8]) -> Option<(usize, &[u8])> {
        let (b, rest) = split::<8>(bytes)?;
        Some((usize::try_from(u64::from_le_bytes(b)).ok()?, rest))
    }
    Some(match ty {
        ValueType::U8 => split::<1>(bytes).map(|(b, r)| (MetaValue::U8(b[0]), r))?,
        ValueType::I8 => split::<1>(bytes).map(|(b, r)| (MetaValue::I8(b[0] as i8), r))?,
        ValueType::Bool => split::<1>(bytes).map(|(b, r)| (MetaValue::Bool(b[0] != 0), r))?,
        ValueType::U16 => split(bytes).map(|(b, r)| (MetaValue::U16(u16::from_le_bytes(b)), r))?,
        ValueType::I16 => split(bytes).map(|(b, r)| (MetaValue::I16(i16::from_le_bytes(b)), r))?,
        ValueType::U32 => split(bytes).map(|(b, r)| (MetaValue::U32(u32::from_le_bytes(b)), r))?,
        ValueType::I32 => split(bytes).map(|(b, r)| (MetaValue::I32(i32::from_le_bytes(b)), r))?,
        ValueType::F32 => split(bytes).map(|(b, r)| (MetaValue::F32(f32::from_le_bytes(b)), r))?,
        ValueType::U64 => split(bytes).map(|(b, r)| (MetaValue::U64(u64::from_le_bytes(b)), r))?,
        ValueType::I64 => split(bytes).map(|(b, r)| (MetaValue::I64(i64::from_le_bytes(b)), r))?,
        ValueType::F64 => split(bytes).map(|(b, r)| (MetaValue::F64(f64::from_le_bytes(b)), r))?,
        ValueType::String => {
            let (len, rest) = split_u64(bytes)?;
            let (text, rest) = rest.split_at_checked(len)?;
            (MetaValue::String(std::str::from_utf8(text).ok()?), rest)
        }
        ValueType::Array => {
            let (type_id, rest) = split::<4>(bytes)?;
            let elem_type = ValueType::from_id(u32::from_le_bytes(type_id))?;
            let (len, rest) = split_u64(rest)?;
            let n_bytes = encoded_len(elem_type, len, rest)?;
            let (body, rest) = rest.split_at_checked(n_bytes)?;
            (
                MetaValue::Array(MetaArray::new_validated(elem_type, len, body)),
                rest,
            )
        }
    })
}

/// Bytes occupied by `len` validated elements of `elem_type` at the front of `bytes`.
fn encoded_len(elem_type: ValueType, len: usize, bytes: &[u8]) -> Option<usize> {
    if let Some(size) = elem_type.fixed_size() {
        return len.checked_mul(size);
    }
    let mut rest = bytes;
    for _ in 0..len {
        let (_, next) = decode_validated(elem_type, rest)?;
        rest = next;
    }
    Some(bytes.len() - rest.len())
}

/// A fixed-size type that can be an array element.
pub trait ArrayElem: Sized + Copy {
    /// The GGUF value type of the element.
    const VALUE_TYPE: ValueType;
    /// Encoded size in bytes.
    const SIZE: usize;
    /// `"array of u32"` and so on, for messages.
    const ARRAY_DESCRIPTION: &'static str;
    /// Decodes from exactly `SIZE` little-endian bytes.
    fn from_le_bytes(bytes: &[u8]) -> Self;
}

macro_rules! array_elem {
    ($($t:ty => $vt:ident),*) => {$(
        impl ArrayElem for $t {
            const VALUE_TYPE: ValueType = ValueType::$vt;
            const SIZE: usize = std::mem::size_of::<$t>();
            const ARRAY_DESCRIPTION: &'static str = concat!("array of ", stringify!($t));
            fn from_le_bytes(bytes: &[u8]) -> Self {
                let mut buf = [0u8; std::mem::size_of::<$t>()];
                buf.copy_from_slice(bytes);
                <$t>::from_le_bytes(buf)
            }
        }
    )*};
}
array_elem!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
            u64 => U64, i64 => I64, f64 => F64);

impl ArrayElem for bool {
    const VALUE_TYPE: ValueType = ValueType::Bool;
    const SIZE: usize = 1;
    const ARRAY_DESCRIPTION: &'static str = "array of bool";
    fn from_le_bytes(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
}

/// An owned metadata value, for writing files and for comparing what was read.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Homogeneous array.
    Array(Array),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl Value {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}

/// An owned homogeneous array; nested arrays may each have their own element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// Boolean elements.
    Bool(Vec<bool>),
    /// String elements.
    String(Vec<String>),
    /// Nested arrays.
    Array(Vec<Array>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f64` elements.
    F64(Vec<f64>),
}

impl Array {
    /// The element type.
    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
