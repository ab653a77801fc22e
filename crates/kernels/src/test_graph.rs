//! Leaf builders for the plan tests: inputs, weights and states of a type and shape.

use graph::{DType, GraphBuilder, NodeId, Shape};

/// An input leaf.
pub(crate) fn input(g: &mut GraphBuilder, name: &str, ty: DType, dims: &[usize]) -> NodeId {
    g.input(name, ty, Shape::new(dims).unwrap()).unwrap()
}

/// A weight leaf.
pub(crate) fn weight(g: &mut GraphBuilder, name: &str, ty: DType, dims: &[usize]) -> NodeId {
    g.weight(name, ty, Shape::new(dims).unwrap()).unwrap()
}

/// A state leaf.
pub(crate) fn state(g: &mut GraphBuilder, name: &str, ty: DType, dims: &[usize]) -> NodeId {
    g.state(name, ty, Shape::new(dims).unwrap()).unwrap()
}
