//! Writing a plan: the header, then each tensor's data read from the checkpoint a few
//! megabytes at a time, converted (rows quantized in parallel) and streamed out. The file is
//! written under a temporary name next to the output, checked with specula's own loader, and
//! only then renamed into place, so a failure never leaves a half-written model behind.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gguf::{GgmlType, GgufFile, GgufWriter, Value};
use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, Dtype, SourceTensor};
use crate::error::{Error, Result};
use crate::kv::Kv;
use crate::plan::{Plan, PlannedTensor, TensorSource};

/// Elements converted per read of the checkpoint.
const CHUNK_ELEMS: u64 = 1 << 22;

/// Elements (whole rows) quantized per parallel task.
const TASK_ELEMS: usize = 1 << 16;

/// `general.quantization_version` (ggml's current block layouts).
const QUANTIZATION_VERSION: u32 = 2;

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The output file.
    pub path: PathBuf,
    /// `general.architecture`.
    pub arch: String,
    /// Metadata entries.
    pub n_keys: usize,
    /// Tensors, by ggml type.
    pub tensors_by_type: BTreeMap<String, usize>,
    /// File size in bytes.
    pub n_bytes: u64,
}

/// Writes `plan` (with the `general.*` keys `general`) to `out`.
pub(crate) fn write_plan(
    plan: Plan,
    general: Kv,
    ck: &Checkpoint,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary> {
    let werr = |source: gguf::Error| Error::Write {
        path: out.to_path_buf(),
        source: Box::new(source),
    };
    let mut kv = Kv::new();
    kv.set_str("general.architecture", plan.arch);
    kv.extend(general);
    kv.extend(plan.model_kv);
    kv.set(
        "general.quantization_version",
        Value::U32(QUANTIZATION_VERSION),
    );
    kv.extend(plan.tokenizer_kv);
    let n_keys = kv.len();

    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".specula-convert-").suffix(".gguf.tmp");
    // A model file is not a secret: the usual 0o666 less the umask, not a temp file's 0o600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = builder.tempfile_in(&dir).map_err(|e| Error::io(&dir, e))?;
    let file = tmp.reopen().map_err(|e| Error::io(tmp.path(), e))?;

    let mut writer = GgufWriter::new(file);
    for (key, value) in kv.into_entries() {
        writer.add_metadata(key, value).map_err(werr)?;
    }
    let mut total = 0u64;
    for t in &plan.tensors {
        writer
            .add_tensor(t.name.as_str(), t.ggml_type, &t.shape)
            .map_err(werr)?;
        total += t.ggml_type.bytes_for(t.n_elems()).unwrap_or(0);
    }
    let mut data = writer.write_header().map_err(werr)?;
    let mut done = 0u64;
    progress(done, total);
    for t in &plan.tensors {
        match &t.source {
            TensorSource::Values(values) => {
                let bytes = encode(t.ggml_type, values).map_err(|r| Error::invalid(out, r))?;
                data.write_tensor(&t.name, &bytes).map_err(werr)?;
            }
            TensorSource::Checkpoint { index, n_elems } => {
                let src = &ck.tensors()[*index];
                let mut on_chunk = |bytes: u64| progress(done + bytes, total);
                let mut reader = TensorReader::new(ck, src, t, *n_elems, &mut on_chunk);
                let result = data.write_tensor_from(&t.name, &mut reader);
                if let Some(e) = reader.failure.take() {
                    return Err(e);
                }
                result.map_err(werr)?;
            }
        }
        done += t.ggml_type.bytes_for(t.n_elems()).unwrap_or(0);
        progress(done, total);
    }
    let file = data.finish().map_err(werr)?;
    file.sync_all().map_err(|e| Error::io(out, e))?;
    drop(file);

    verify(tmp.path(), out, plan.arch)?;
    let n_bytes = std::fs::metadata(tmp.path())
        .map_err(|e| Error::io(tmp.path(), e))?
        .len();
    tmp.persist(out).map_err(|e| Error::io(out, e.error))?;
    let mut tensors_by_type = BTreeMap::new();
    for t in &plan.tensors {
        *tensors_by_type
            .entry(t.ggml_type.name().to_string())
            .or_insert(0) += 1;
    }
    Ok(Summary {
        path: out.to_path_buf(),
        arch: plan.arch.to_string(),
        n_keys,
        tensors_by_type,
        n_bytes,
    })
}

/// Opens the written file at `path` (to become `out`) with specula's loader for its
/// architecture.
fn verify(path: &Path, out: &Path, arch: &str) -> Result<()> {
    let fail = |reason: String| Error::Verify {
        path: out.to_path_buf(),
        reason,
    };
    let file = GgufFile::open(path).map_err(|e| fail(e.to_string()))?;
    match arch {
        crate::target::ARCH => target::Gemma4Config::from_gguf(&file)
            .map(drop)
            .map_err(|e| fail(e.to_string())),
        crate::assistant::ARCH => drafter_mtp::AssistantConfig::from_gguf(&file)
            .map(drop)
            .map_err(|e| fail(e.to_string())),
        crate::dflash::ARCH => drafter_dflash::Source::from_gguf(Arc::new(file))
            .map(drop)
            .map_err(fail),
        other => Err(fail(format!("no loader for architecture '{other}'"))),
    }
}

/// `values` in type `ty`.
pub(crate) fn encode(ty: GgmlType, values: &[f32]) -> std::result::Result<Vec<u8>, String> {
    Ok(match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => gguf::quant::quantize(ty, values).map_err(|e| e.to_string())?,
    })
}

/// A checkpoint tensor's bytes in the output type, produced chunk by chunk as the writer reads.
struct TensorReader<'a> {
    /// Called with the bytes of this tensor produced so far.
    on_chunk: &'a mut dyn FnMut(u64),
    produced: u64,
    ck: &'a Checkpoint,
    src: &'a SourceTensor,
    ty: GgmlType,
    row_len: u64,
    n_elems: u64,
    next: u64,
    buf: Vec<u8>,
    pos: usize,
    failure: Option<Error>,
}

impl<'a> TensorReader<'a> {
    fn new(
        ck: &'a Checkpoint,
        src: &'a SourceTensor,
        t: &PlannedTensor,
        n_elems: u64,
        on_chunk: &'a mut dyn FnMut(u64),
    ) -> Self {
        TensorReader {
            on_chunk,
            produced: 0,
            ck,
            src,
            ty: t.ggml_type,
            row_len: t.shape.first().copied().unwrap_or(1).max(1),
            n_elems,
            next: 0,
            buf: Vec::new(),
            pos: 0,
            failure: None,
        }
    }

    /// Converts the next chunk of whole rows into `buf`.
    fn fill(&mut self) -> Result<()> {
        let rows = (CHUNK_ELEMS / self.row_len).max(1);
        let count = (rows * self.row_len).min(self.n_elems - self.next);
        let same_type = matches!(
            (&self.src.dtype, self.ty),
            (Ok(Dtype::F32), GgmlType::F32)
                | (Ok(Dtype::F16), GgmlType::F16)
                | (Ok(Dtype::Bf16), GgmlType::BF16)
        );
        self.buf = if same_type {
            self.ck.read_bytes(self.src, self.next, count)?
        } else {
            let values = self.ck.read_f32(self.src, self.next, count)?;
            let task = (TASK_ELEMS as u64 / self.row_len).max(1) as usize * self.row_len as usize;
            let parts: std::result::Result<Vec<Vec<u8>>, String> = values
                .par_chunks(task)
                .map(|c| encode(self.ty, c))
                .collect();
            parts
                .map_err(|r| self.ck.tensor_error(self.src, r))?
                .concat()
        };
        self.pos = 0;
        self.next += count;
        (self.on_chunk)(self.produced);
        self.produced += self.buf.len() as u64;
        Ok(())
    }
}

impl Read for TensorReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.next >= self.n_elems {
                return Ok(0);
            }
            if let Err(e) = self.fill() {
                let message = e.to_string();
                self.failure = Some(e);
                return Err(io::Error::other(message));
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
