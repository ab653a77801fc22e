//! The file's bytes: memory-mapped from disk, or owned in memory. The crate's only `unsafe`.

use std::fs::File;
use std::ops::Deref;

/// The bytes of a GGUF file.
#[derive(Debug)]
pub(crate) enum Storage {
    /// A read-only memory map of a file on disk.
    Mapped(memmap2::Mmap),
    /// Bytes owned in memory.
    Owned(Vec<u8>),
}

impl Storage {
    /// Maps `file` read-only; an empty file becomes an empty buffer (mapping zero bytes fails
    /// on some platforms).
    pub(crate) fn map(file: &File) -> std::io::Result<Storage> {
        if file.metadata()?.len() == 0 {
            return Ok(Storage::Owned(Vec::new()));
        }
        #[allow(unsafe_code)]
        // SAFETY: the map is read-only and private to this process. Its contents stay valid as
        // long as no other process truncates or rewrites the file while it is open; that is the
        // same contract every mmap-based model loader (llama.cpp, candle, safetensors) makes,
        // and it is documented on `GgufFile::open`.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(Storage::Mapped(map))
    }
}

impl Deref for Storage {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }
}
