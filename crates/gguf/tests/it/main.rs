//! Integration tests of the `gguf` crate, through its public API only.

mod bad_files;
mod fixtures;
mod fuzz;
mod golden;
mod quant_props;
mod roundtrip;
mod testing;
