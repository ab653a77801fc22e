//! Integration tests of the `graph` crate: every op on the CPU backend against a naive
//! reference on random inputs, shape inference properties, and memory planning.

mod attention;
mod harness;
mod ops;
mod plan;
mod shapes;
