//! The one error type of the crate. Every message names the file and, where it applies, the
//! key or tensor: `hf/config.json: key 'num_attention_heads' is missing`.

use std::path::{Path, PathBuf};

/// What went wrong while converting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read, written or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The checkpoint cannot be converted: a missing or malformed key, a missing tensor, a
    /// shape that disagrees with the config, an unsupported architecture or dtype.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file (or folder) at fault.
        path: PathBuf,
        /// What is wrong, naming the key or tensor.
        reason: String,
    },
    /// Writing the GGUF failed.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The writer's error.
        #[source]
        source: Box<gguf::Error>,
    },
    /// The written file does not load with specula's own loader (a converter bug); nothing is
    /// left at the output path.
    #[error("{}: the converted file does not load: {reason}", path.display())]
    Verify {
        /// The output path.
        path: PathBuf,
        /// The loader's complaint.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Invalid`] about `path`.
    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> Error {
        Error::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Io`] about `path`.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
