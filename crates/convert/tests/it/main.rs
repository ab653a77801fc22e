//! Integration tests of the `convert` crate, through its public API only.

mod bad_input;
mod checkpoints;
mod export;
mod fixtures;
mod loads;
mod other_layouts;
mod quantized;
mod testing;
