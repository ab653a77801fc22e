//! Model graph builders, one file per architecture.

pub mod gemma4;
