//! Integration tests of the `convert` crate, through its public API only.

mod bad_input;
mod fixtures;
mod quantized;
mod testing;
