//! The crate's error type.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from loading or running the target model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the GGUF file failed (the message names the file and key or tensor).
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// Building or running a graph failed.
    #[error(transparent)]
    Graph(#[from] graph::Error),
    /// The file is not a model this crate runs, or its metadata is inconsistent.
    #[error("{file}: {reason}")]
    Config {
        /// The model file.
        file: String,
        /// What is wrong, naming the key or tensor.
        reason: String,
    },
    /// A required tensor is missing or has the wrong shape.
    #[error("{file}: tensor '{tensor}': {reason}")]
    Tensor {
        /// The model file.
        file: String,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// Bad input from the caller: a token id out of range, a context too long, a prompt that
    /// cannot be tokenized.
    #[error("{0}")]
    Input(String),
    /// The chat template could not be rendered.
    #[error("chat template: {0}")]
    Template(String),
}
