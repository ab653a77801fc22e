//! The contract between graphs and the devices that run them.
//!
//! A backend owns buffers (weights, states, inputs, activations) behind [`BufferId`] handles,
//! so device addresses stay fixed for the life of a loaded graph (what CUDA graph capture
//! needs). Loading a graph plans its memory once; each run then only reads inputs the caller
//! wrote into the executable's input buffers.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use crate::op::DType;
use crate::shape::Shape;

/// A buffer owned by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferId(pub usize);

/// A graph loaded on a backend, ready to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecId(pub usize);

/// Bytes on the host to upload: owned, or a range of a shared owner such as a memory-mapped
/// GGUF file (the CPU backend keeps such ranges without copying).
#[derive(Clone)]
pub struct HostBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for HostBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBytes({} bytes at {})", self.len, self.start)
    }
}

impl HostBytes {
    /// Owned bytes.
    pub fn from_vec(bytes: Vec<u8>) -> HostBytes {
        let len = bytes.len();
        HostBytes {
            owner: Arc::new(bytes),
            start: 0,
            len,
        }
    }

    /// `len` bytes at `start` of `owner`; errors if the range is outside it.
    pub fn shared(
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        start: usize,
        len: usize,
    ) -> Result<HostBytes> {
        let total = (*owner).as_ref().len();
        if start.checked_add(len).is_none_or(|end| end > total) {
            return Err(Error::Handle(format!(
                "byte range {start}+{len} is outside a {total}-byte owner"
            )));
        }
        Ok(HostBytes { owner, start, len })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Data written from the host into a buffer.
#[derive(Clone, Copy, Debug)]
pub enum HostData<'a> {
    /// f32 values (F32 or F16 buffers).
    F32(&'a [f32]),
    /// i32 values (I32 buffers).
    I32(&'a [i32]),
}

impl HostData<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::I32(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Data read back from a buffer.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Float buffers of any type, converted to f32.
    F32(Vec<f32>),
    /// I32 buffers.
    I32(Vec<i32>),
}

impl TensorData {
    /// The values as f32, or an error naming what was there instead.
    pub fn into_f32(self) -> Result<Vec<f32>> {
        match self {
            TensorData::F32(v) => Ok(v),
            TensorData::I32(_) => Err(Error::Handle("expected f32 data, found i32".into())),
        }
    }

    /// The values as i32, or an error naming what was there instead.
    pub fn into_i32(self) -> Result<Vec<i32>> {
        match self {
            TensorData::I32(v) => Ok(v),
            TensorData::F32(_) => Err(Error::Handle("expected i32 data, found f32".into())),
        }
    }

    /// Elements `offset..offset + len`, or an error when they run past the data.
    pub fn range(self, offset: usize, len: usize) -> Result<TensorData> {
        fn take<T: Copy>(v: Vec<T>, offset: usize, len: usize) -> Result<Vec<T>> {
            let n = v.len();
            offset
                .checked_add(len)
                .and_then(|end| v.get(offset..end))
                .map(<[T]>::to_vec)
                .ok_or_else(|| {
                    Error::Handle(format!("elements {offset}..+{len} of a {n}-element buffer"))
                })
        }
        Ok(match self {
            TensorData::F32(v) => TensorData::F32(take(v, offset, len)?),
            TensorData::I32(v) => TensorData::I32(take(v, offset, len)?),
        })
    }
}

/// Buffers bound to a graph's `Weight` and `State` leaves (and optionally `Input` leaves,
/// to share one input buffer between graphs).
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    map: HashMap<NodeId, BufferId>,
}

impl Bindings {
    /// No bindings yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds leaf `node` to `buffer`.
    pub fn bind(&mut self, node: NodeId, buffer: BufferId) -> &mut Self {
        self.map.insert(node, buffer);
        self
    }

    /// The buffer bound to `node`, if any.
    pub fn get(&self, node: NodeId) -> Option<BufferId> {
        self.map.get(&node).copied()
    }
}

/// A device that runs graphs. Object-safe, so a runtime can pick one at run time.
pub trait Backend: Send {
    /// A short name for messages (`"cpu"`, `"cuda:0 (NVIDIA H100)"`).
    fn name(&self) -> String;

    /// Allocates a zero-filled buffer.
    fn alloc(&mut self, dtype: DType, shape: Shape) -> Result<BufferId>;

    /// Creates a buffer holding `data` as `dtype` (weights of any ggml type), without copying
    /// where the backend can use host memory directly.
    fn upload(&mut self, dtype: DType, shape: Shape, data: HostBytes) -> Result<BufferId>;

    /// Writes `data` into `buffer` starting at element `offset`.
    fn write(&mut self, buffer: BufferId, offset: usize, data: HostData<'_>) -> Result<()>;

    /// Reads a whole buffer back (floats converted to f32).
    fn read(&self, buffer: BufferId) -> Result<TensorData>;

    /// Releases a buffer.
    fn free(&mut self, buffer: BufferId) -> Result<()>;

    /// Plans and allocates everything `graph` needs to run repeatedly. Every `Weight` and
    /// `State` leaf must be bound to a buffer of its exact dtype and shape; unbound `Input`
    /// leaves get buffers of their own.
    fn load(&mut self, graph: &Graph, bindings: &Bindings) -> Result<ExecId>;

    /// The buffer holding `node`'s value in a loaded graph (inputs to write, outputs to read).
    fn buffer_of(&self, exe: ExecId, node: NodeId) -> Result<BufferId>;

    /// Runs a loaded graph once, with whatever its input buffers hold now.
    fn run(&mut self, exe: ExecId) -> Result<()>;

    /// Releases a loaded graph and its activation and input buffers.
    fn unload(&mut self, exe: ExecId) -> Result<()>;

    /// Free and total memory of the device in bytes, where the backend has a fixed pool (GPUs);
    /// `None` for host memory.
    fn memory_info(&self) -> Option<(u64, u64)> {
        None
    }

    /// Reads elements `offset..offset + len` of a buffer (floats converted to f32). The default
    /// reads the whole buffer; device backends copy only the range.
    fn read_range(&self, buffer: BufferId, offset: usize, len: usize) -> Result<TensorData> {
        self.read(buffer)?.range(offset, len)
    }

    /// Reads `node`'s value after a run: exactly its elements, in logical order, whatever
    /// slot or view it lives in. Only the node's span of its buffer is read (a prefill chunk's
    /// hidden rows live in a slot sized for its FFN rows).
    fn read_node(&self, exe: ExecId, graph: &Graph, node: NodeId) -> Result<TensorData> {
        let mut layout = graph.node(node).layout;
        let span = layout.span();
        let data = self
            .read_range(
                self.buffer_of(exe, node)?,
                layout.offset,
                span.saturating_sub(layout.offset),
            )
            .map_err(|e| {
                Error::Handle(format!(
                    "node #{} reaches past its buffer: {e}",
                    node.index()
                ))
            })?;
        layout.offset = 0;
        if layout.is_contiguous() {
            return Ok(data);
        }
        Ok(match data {
            TensorData::F32(v) => TensorData::F32(gather(&v, &layout)),
            TensorData::I32(v) => TensorData::I32(gather(&v, &layout)),
        })
    }
}

/// The elements of `layout` in logical order from the storage `v`.
fn gather<T: Copy>(v: &[T], layout: &crate::shape::Layout) -> Vec<T> {
    let d = layout.shape.dims();
    let mut out = Vec::with_capacity(layout.shape.n_elems());
    for i3 in 0..d[3] {
        for i2 in 0..d[2] {
            for i1 in 0..d[1] {
                for i0 in 0..d[0] {
                    out.push(v[layout.index([i0, i1, i2, i3])]);
                }
            }
        }
    }
    out
}
