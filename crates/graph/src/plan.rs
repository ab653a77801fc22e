//! Memory planning: which nodes need a buffer of their own, and which buffers can be reused
//! once every reader of a value has run.
//!
//! The plan is backend-independent: each backend allocates one buffer per [`Slot`] when it
//! loads a graph, so no allocation happens while the graph runs.

use crate::backend::{Backend, Bindings, BufferId};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use crate::op::{DType, Op};
use crate::shape::Shape;

/// One activation buffer the graph needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Element type stored.
    pub dtype: DType,
    /// Capacity in elements (the largest value placed in it).
    pub n_elems: usize,
}

/// Where every node's value lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A leaf: its buffer is bound (weights, states) or allocated per executable (inputs).
    Leaf,
    /// A planned activation slot.
    Slot(usize),
    /// Shares the storage of another node (views, reshapes, in-place writes).
    Alias(NodeId),
}

/// Nodes whose launches may run out of graph order, for example on two streams at once: every
/// value any of them reads or writes keeps its slot until node `until` has run, so no node
/// between them takes a slot one of them still uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Indices (in [`Graph::nodes`]) of the nodes whose inputs and outputs are held.
    pub nodes: Vec<usize>,
    /// Index of the node after which the held slots may be reused.
    pub until: usize,
}

/// The memory plan of a graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The activation buffers to allocate.
    pub slots: Vec<Slot>,
    /// Storage of each node, indexed like [`Graph::nodes`].
    pub storage: Vec<Storage>,
}

impl MemoryPlan {
    /// Plans `graph`: a value's slot is released after its last reader (outputs are never
    /// released), and a released slot of the same dtype is reused, best fit first.
    pub fn new(graph: &Graph) -> MemoryPlan {
        MemoryPlan::with_holds(graph, &[])
    }

    /// [`MemoryPlan::new`], with each of `holds` keeping the values its nodes read or write
    /// until its `until` node at least.
    pub fn with_holds(graph: &Graph, holds: &[Hold]) -> MemoryPlan {
        let nodes = graph.nodes();
        // Last reader of each root's storage (usize::MAX for outputs).
        let mut last_use = vec![0usize; nodes.len()];
        for (i, node) in nodes.iter().enumerate() {
            last_use[node.root.index()] = last_use[node.root.index()].max(i);
            for input in &node.inputs {
                let root = nodes[input.index()].root.index();
                last_use[root] = last_use[root].max(i);
            }
        }
        for hold in holds {
            for &i in &hold.nodes {
                let Some(node) = nodes.get(i) else { continue };
                let until = hold.until.min(nodes.len() - 1);
                for root in std::iter::once(node.root.index())
                    .chain(node.inputs.iter().map(|x| nodes[x.index()].root.index()))
                {
                    last_use[root] = last_use[root].max(until);
                }
            }
        }
        for out in graph.outputs() {
            last_use[nodes[out.index()].root.index()] = usize::MAX;
        }
        // Roots whose storage ends after node i.
        let mut ends_at: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (root, &end) in last_use.iter().enumerate() {
            if end != usize::MAX && nodes[root].root.index() == root && !nodes[root].op.is_leaf() {
                ends_at[end].push(root);
            }
        }

        let mut slots: Vec<Slot> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut slot_of = vec![usize::MAX; nodes.len()];
        let mut storage = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            if node.op.is_leaf() {
                storage.push(Storage::Leaf);
            } else if node.root.index() != i {
                storage.push(Storage::Alias(node.root));
            } else {
                let need = node.shape().n_elems();
                let slot = take_free(&mut free, &mut slots, node.dtype, need);
                slot_of[i] = slot;
                storage.push(Storage::Slot(slot));
            }
            for &root in &ends_at[i] {
                if slot_of[root] != usize::MAX {
                    free.push(slot_of[root]);
                }
            }
        }
        MemoryPlan { slots, storage }
    }

    /// Total bytes of f32/i32 activation slots (what a backend allocates to run the graph).
    pub fn activation_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.n_elems * 4).sum()
    }

    /// Allocates the plan's slots on `backend` and gives every node of `graph` its buffer: a
    /// slot's, its alias root's, or for a leaf its binding, which must be of the leaf's exact
    /// dtype and shape (`describe` reports a buffer's), else, for an unbound `Input`, a new
    /// buffer. Returns the node buffers and the buffers allocated here (the executable's own).
    pub fn allocate<B: Backend + ?Sized>(
        &self,
        graph: &Graph,
        bindings: &Bindings,
        backend: &mut B,
        describe: impl Fn(&B, BufferId) -> Result<(DType, Shape)>,
    ) -> Result<(Vec<BufferId>, Vec<BufferId>)> {
        let mut owned = Vec::new();
        for slot in &self.slots {
            owned.push(backend.alloc(slot.dtype, Shape::new(&[slot.n_elems])?)?);
        }
        let slot_buffers = owned.clone();
        let mut node_buffer: Vec<BufferId> = Vec::with_capacity(graph.nodes().len());
        for (i, node) in graph.nodes().iter().enumerate() {
            let id = NodeId::from_index(i);
            let buffer = match &self.storage[i] {
                Storage::Slot(k) => slot_buffers[*k],
                Storage::Alias(root) => node_buffer[root.index()],
                Storage::Leaf => match (bindings.get(id), &node.op) {
                    (Some(b), _) => {
                        let (dtype, shape) = describe(backend, b)?;
                        if dtype != node.dtype || shape != node.shape() {
                            return Err(Error::Binding {
                                node: node.label(id),
                                reason: format!(
                                    "leaf is {} {}, buffer is {dtype} {shape}",
                                    node.dtype,
                                    node.shape()
                                ),
                            });
                        }
                        b
                    }
                    (None, Op::Input) => {
                        let b = backend.alloc(node.dtype, node.shape())?;
                        owned.push(b);
                        b
                    }
                    (None, _) => {
                        return Err(Error::Binding {
                            node: node.label(id),
                            reason: format!("{} leaf is not bound to a buffer", node.op.name()),
                        })
                    }
                },
            };
            node_buffer.push(buffer);
        }
        Ok((node_buffer, owned))
    }
}

/// Picks a free slot of `dtype` (the smallest that fits, else the largest, grown), or a new one.
fn take_free(free: &mut Vec<usize>, slots: &mut Vec<Slot>, dtype: DType, need: usize) -> usize {
    let same: Vec<usize> = (0..free.len())
        .filter(|&k| slots[free[k]].dtype == dtype)
        .collect();
    let fitting = same
        .iter()
        .copied()
        .filter(|&k| slots[free[k]].n_elems >= need)
        .min_by_key(|&k| slots[free[k]].n_elems);
    let chosen = fitting.or_else(|| same.iter().copied().max_by_key(|&k| slots[free[k]].n_elems));
    match chosen {
        Some(k) => {
            let slot = free.swap_remove(k);
            slots[slot].n_elems = slots[slot].n_elems.max(need);
            slot
        }
        None => {
            slots.push(Slot {
                dtype,
                n_elems: need,
            });
            slots.len() - 1
        }
    }
}
