//! The CPU reference backend: plain f32 arithmetic, multithreaded with rayon.
//!
//! It is the oracle every other backend is tested against, and the engine for machines
//! without a GPU. Quantized weights are read block by block (one dequantized row at a time per
//! thread), never expanded to a full f32 copy; weight bytes uploaded from a memory-mapped file
//! are used in place.

mod attention;
mod elementwise;
mod matmul;
mod norm;
mod select;
mod storage;

use crate::backend::{Backend, Bindings, BufferId, ExecId, HostBytes, HostData, TensorData};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, NodeId};
use crate::op::{DType, Op};
use crate::plan::MemoryPlan;
use crate::shape::{Layout, Shape};

pub(crate) use storage::{CpuBuffer, Data};

struct Exec {
    graph: Graph,
    /// Buffer of each node's storage root.
    node_buffer: Vec<BufferId>,
    /// Buffers this executable owns (inputs it allocated and activation slots).
    owned: Vec<BufferId>,
}

/// The CPU backend.
#[derive(Default)]
pub struct CpuBackend {
    buffers: Vec<Option<CpuBuffer>>,
    execs: Vec<Option<Exec>>,
    /// See [`CpuBackend::set_f16_products`].
    f16_products_from: Option<usize>,
}

impl CpuBackend {
    /// A backend using rayon's global thread pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Products of at least `min_rows` activation rows with block-quantized or f16 weights round
    /// both operands to f16 (round to nearest even) before their f32 dot products, as a GPU
    /// backend's GEMM route does for prefill chunks: the reference that route is tested against.
    /// An activation row past the f16 range is first divided by a power of two (the smallest
    /// 2^e with max |x| ≤ 32768 · 2^e) and its products multiplied back. `None` (the default)
    /// keeps every product in f32.
    pub fn set_f16_products(&mut self, min_rows: Option<usize>) {
        self.f16_products_from = min_rows;
    }

    fn insert(&mut self, buffer: CpuBuffer) -> BufferId {
        self.buffers.push(Some(buffer));
        BufferId(self.buffers.len() - 1)
    }

    fn buffer(&self, id: BufferId) -> Result<&CpuBuffer> {
        self.buffers
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Handle(format!("cpu buffer #{} does not exist", id.0)))
    }

    fn exec(&self, id: ExecId) -> Result<&Exec> {
        self.execs
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Handle(format!("cpu executable #{} does not exist", id.0)))
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn alloc(&mut self, dtype: DType, shape: Shape) -> Result<BufferId> {
        let buffer = CpuBuffer::zeros(dtype, shape)?;
        Ok(self.insert(buffer))
    }

    fn upload(&mut self, dtype: DType, shape: Shape, data: HostBytes) -> Result<BufferId> {
        let buffer = CpuBuffer::from_bytes(dtype, shape, data)?;
        Ok(self.insert(buffer))
    }

    fn write(&mut self, buffer: BufferId, offset: usize, data: HostData<'_>) -> Result<()> {
        self.buffers
            .get_mut(buffer.0)
            .and_then(Option::as_mut)
            .ok_or_else(|| Error::Handle(format!("cpu buffer #{} does not exist", buffer.0)))?
            .write(offset, data)
    }

    fn read(&self, buffer: BufferId) -> Result<TensorData> {
        self.buffer(buffer)?.read()
    }

    fn free(&mut self, buffer: BufferId) -> Result<()> {
        self.buffer(buffer)?;
        self.buffers[buffer.0] = None;
        Ok(())
    }

    fn load(&mut self, graph: &Graph, bindings: &Bindings) -> Result<ExecId> {
        let (node_buffer, owned) =
            MemoryPlan::new(graph).allocate(graph, bindings, self, |cpu, b| {
                let buf = cpu.buffer(b)?;
                Ok((buf.dtype, buf.shape))
            })?;
        self.execs.push(Some(Exec {
            graph: graph.clone(),
            node_buffer,
            owned,
        }));
        Ok(ExecId(self.execs.len() - 1))
    }

    fn buffer_of(&self, exe: ExecId, node: NodeId) -> Result<BufferId> {
        self.exec(exe)?
            .node_buffer
            .get(node.index())
            .copied()
            .ok_or(Error::UnknownNode(node.index()))
    }

    fn run(&mut self, exe: ExecId) -> Result<()> {
        let exec = self
            .execs
            .get_mut(exe.0)
            .and_then(Option::take)
            .ok_or_else(|| Error::Handle(format!("cpu executable #{} does not exist", exe.0)))?;
        let result = run_graph(&mut self.buffers, &exec, self.f16_products_from);
        self.execs[exe.0] = Some(exec);
        result
    }

    fn unload(&mut self, exe: ExecId) -> Result<()> {
        let exec = self
            .execs
            .get_mut(exe.0)
            .and_then(Option::take)
            .ok_or_else(|| Error::Handle(format!("cpu executable #{} does not exist", exe.0)))?;
        for b in exec.owned {
            self.buffers[b.0] = None;
        }
        Ok(())
    }
}

/// An input of the node being run: its node (dtype, layout) and data.
pub(crate) struct Arg<'a> {
    pub node: &'a Node,
    pub data: &'a Data,
}

impl Arg<'_> {
    pub fn layout(&self) -> &Layout {
        &self.node.layout
    }

    pub fn f32(&self) -> Result<&[f32]> {
        self.data.as_f32()
    }

    pub fn i32(&self) -> Result<&[i32]> {
        self.data.as_i32()
    }
}

fn run_graph(
    buffers: &mut [Option<CpuBuffer>],
    exec: &Exec,
    f16_products_from: Option<usize>,
) -> Result<()> {
    let nodes = exec.graph.nodes();
    for (i, node) in nodes.iter().enumerate() {
        if node.op.is_leaf() || matches!(node.op, Op::View | Op::Reshape | Op::Permute(_)) {
            continue;
        }
        let out_id = exec.node_buffer[i];
        let mut out = buffers[out_id.0]
            .take()
            .ok_or_else(|| Error::Handle(format!("buffer of node #{i} was freed")))?;
        let result = (|| {
            // WriteRows updates its destination (input 0) in place: that is `out` itself.
            let skip_first = node.op == Op::WriteRows;
            let mut args = Vec::with_capacity(node.inputs.len());
            for (k, input) in node.inputs.iter().enumerate() {
                if skip_first && k == 0 {
                    continue;
                }
                let b = exec.node_buffer[input.index()];
                let data = buffers[b.0].as_ref().map(|buf| &buf.data).ok_or_else(|| {
                    Error::Handle(format!(
                        "input #{} of node #{i} aliases its output",
                        input.index()
                    ))
                })?;
                args.push(Arg {
                    node: &nodes[input.index()],
                    data,
                });
            }
            run_node(node, NodeId(i), &args, &mut out.data, f16_products_from)
        })();
        buffers[out_id.0] = Some(out);
        result?;
    }
    Ok(())
}

fn run_node(
    node: &Node,
    id: NodeId,
    args: &[Arg<'_>],
    out: &mut Data,
    f16_products_from: Option<usize>,
) -> Result<()> {
    let runtime = |reason: String| Error::Runtime {
        op: node.op.name(),
        node: node.label(id),
        reason,
    };
    match &node.op {
        Op::GetRows => matmul::get_rows(&args[0], &args[1], out).map_err(runtime),
        Op::MatMul => {
            let (w, x) = (args[0].node, args[1].node);
            let f16 = f16_products_from.is_some_and(|rows| x.shape().n_rows() >= rows)
                && (w.dtype.is_quantized() || w.dtype == DType::F16);
            matmul::matmul(&args[0], &args[1], node, out, f16).map_err(runtime)
        }
        Op::MatMulId => matmul::matmul_id(&args[0], &args[1], &args[2], node, out).map_err(runtime),
        Op::MatMulQ8 => matmul::matmul_q8(&args[0], &args[1], node, out).map_err(runtime),
        Op::Binary(op) => elementwise::binary(*op, &args[0], &args[1], node, out),
        Op::Unary(op) => elementwise::unary(*op, &args[0], out),
        Op::Glu(op) => elementwise::glu(*op, &args[0], &args[1], out),
        Op::Contiguous => elementwise::contiguous(&args[0], out),
        Op::Concat { dim } => elementwise::concat(*dim, &args[0], &args[1], node, out),
        Op::RmsNorm { eps } => norm::rms_norm(*eps, &args[0], args.get(1), out),
        Op::Rope(params) => norm::rope(params, &args[0], &args[1], args.get(2), out),
        Op::Softmax => norm::softmax(&args[0], out),
        Op::Attention(params) => attention::attention(params, args, node, out).map_err(runtime),
        Op::WriteRows => select::write_rows(&args[0], &args[1], node, out).map_err(runtime),
        Op::Argmax => select::argmax(&args[0], out),
        Op::TopK(k) => select::top_k(*k, &args[0], out),
        Op::MoeWeights { renormalize } => {
            select::moe_weights(*renormalize, &args[0], &args[1], args.get(2), out).map_err(runtime)
        }
        Op::MoeSum => select::moe_sum(&args[0], &args[1], out).map_err(runtime),
        Op::Input | Op::Weight | Op::State | Op::View | Op::Reshape | Op::Permute(_) => Ok(()),
    }
}
