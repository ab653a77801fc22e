//! The Gemma 4 target model: config from GGUF metadata, weights bound by llama.cpp's tensor
//! names, the forward pass as a graph (one path for prefill, decode and verify batches), the
//! KV cache with O(1) truncation, the tokenizer, sampling and autoregressive generation.
//!
//! Design decision: the model only describes computation (`models/gemma4.rs` builds a
//! [`graph::Graph`]); a [`graph::Backend`] runs it. The same code therefore runs on the CPU
//! reference backend and on CUDA, and every step shape is built once and replayed.
//!
//! ```no_run
//! use std::sync::Arc;
//! use target::{LogitRows, Target, TargetOptions};
//!
//! let file = Arc::new(gguf::GgufFile::open("model.gguf")?);
//! let mut model = Target::load(file, Box::new(graph::CpuBackend::new()), &TargetOptions::default(), &mut |_, _| {})?;
//! let out = model.forward(&[2, 651, 1234], LogitRows::Last, &[], false)?;
//! println!("{} logits", out.logits.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod config;
mod error;
pub mod generate;
pub mod kv_cache;
pub mod models;
pub mod sampling;
mod session;
pub mod speculative;
pub mod tokenizer;
pub mod weights;

pub use config::Gemma4Config;
pub use error::{Error, Result};
pub use generate::{
    generate, prefill, prefill_all_but_last, prefill_with, Generation, GenerationStats,
};
pub use kv_cache::KvCache;
pub use models::gemma4::{LogitRows, StepSpec};
pub use sampling::{Sampler, SamplingParams};
pub use session::{StepOutput, Target, TargetOptions};
pub use speculative::{
    generate_speculative, Draft, DraftRequest, ExternalDrafter, Round, SpeculativeGeneration,
    Verified,
};
pub use tokenizer::{ChatMessage, Tokenizer};
