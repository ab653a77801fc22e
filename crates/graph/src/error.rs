//! The crate's error type.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from building, planning or running a graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An op's inputs do not fit together; names the op and the shapes.
    #[error("{op}: {reason}")]
    Shape {
        /// The op being built.
        op: &'static str,
        /// What does not fit, with the shapes.
        reason: String,
    },
    /// An op got an input of a dtype it does not take.
    #[error("{op}: input {input} has dtype {found}, expected {expected}")]
    DType {
        /// The op being built.
        op: &'static str,
        /// Which input (0-based).
        input: usize,
        /// What the op takes.
        expected: String,
        /// What it got.
        found: String,
    },
    /// A node id that is not in the graph.
    #[error("node #{0} is not in this graph")]
    UnknownNode(usize),
    /// A leaf was bound wrongly, or not at all, when loading a graph.
    #[error("binding of {node}: {reason}")]
    Binding {
        /// The leaf's name.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// An unknown or freed buffer or executable handle.
    #[error("{0}")]
    Handle(String),
    /// An op failed at run time (for example a token id out of range).
    #[error("running {op} (node '{node}'): {reason}")]
    Runtime {
        /// The op.
        op: &'static str,
        /// The node's name or number.
        node: String,
        /// What went wrong.
        reason: String,
    },
    /// A backend-specific failure (driver, compiler, allocation).
    #[error("{backend} backend: {message}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// What went wrong.
        message: String,
    },
}
