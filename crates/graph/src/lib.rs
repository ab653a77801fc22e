//! A small op-graph IR, its memory planner, the [`Backend`] contract and the CPU reference
//! backend.
//!
//! Models are described as graphs of a closed set of ops ([`Op`]): the [`GraphBuilder`] checks
//! every op's inputs and infers its output shape and dtype when the op is added, returning an
//! [`Error`] that names the op and the shapes instead of panicking. A finished [`Graph`] is
//! loaded once on a [`Backend`] and run many times.
//!
//! Design decision: graphs are static per shape. Everything that changes from step to step —
//! tokens, positions, cache slots, the number of valid KV positions, masks — is an `Input`
//! leaf written before a run, never a shape. A backend can therefore plan memory once and
//! replay a captured graph (CUDA graphs) on every step.
//!
//! ```
//! use graph::{Backend, Bindings, CpuBackend, DType, GraphBuilder, HostData, Shape};
//!
//! let mut g = GraphBuilder::new();
//! let x = g.input("x", DType::F32, Shape::new(&[4, 2])?)?;
//! let y = g.rms_norm(x, None, 1e-6)?;
//! let graph = g.finish(&[y])?;
//!
//! let mut cpu = CpuBackend::new();
//! let exe = cpu.load(&graph, &Bindings::new())?;
//! let input = cpu.buffer_of(exe, x)?;
//! cpu.write(input, 0, HostData::F32(&[1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0]))?;
//! cpu.run(exe)?;
//! let out = cpu.read(cpu.buffer_of(exe, y)?)?.into_f32()?;
//! assert!((out[4] - 1.0).abs() < 1e-5);
//! # Ok::<(), graph::Error>(())
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod backend;
pub mod cpu;
mod error;
mod graph;
mod op;
mod plan;
mod shape;

pub use backend::{Backend, Bindings, BufferId, ExecId, HostBytes, HostData, TensorData};
pub use cpu::CpuBackend;
pub use error::{Error, Result};
pub use graph::{Graph, GraphBuilder, Node, NodeId};
pub use op::{AttnMask, AttnParams, BinaryOp, DType, GluOp, KvLayout, Op, RopeParams, UnaryOp};
pub use plan::{Hold, MemoryPlan, Slot, Storage};
pub use shape::{Layout, Shape, MAX_DIMS};
