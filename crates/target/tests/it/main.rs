//! Integration tests of the `target` crate against the golden fixtures.

mod forward;
mod testing;
