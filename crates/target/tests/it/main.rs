//! Integration tests of the `target` crate against the golden fixtures.

mod bad_input;
mod forward;
mod incremental;
mod quantized;
mod speculative;
mod testing;
mod tokenizer;
