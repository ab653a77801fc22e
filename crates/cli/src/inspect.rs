//! `specula inspect`: what a GGUF file holds.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use gguf::{GgmlType, GgufFile, MetaArray, MetaValue};
use serde_json::{json, Map, Value as Json};

/// Arguments of `specula inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The GGUF file.
    file: PathBuf,
    /// List every tensor (name, type, shape, offset, bytes).
    #[arg(long)]
    tensors: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Arrays longer than this are summarised as their element type and length.
const MAX_ARRAY_ELEMS: usize = 16;

pub fn run(args: &InspectArgs) -> Result<()> {
    let file = GgufFile::open(&args.file)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &to_json(&file))?;
        writeln!(out)?;
    } else {
        write_text(&mut out, &file, args)?;
    }
    Ok(())
}

/// Tensor count and bytes per ggml type, ordered by type id.
fn bytes_per_type(file: &GgufFile) -> BTreeMap<u32, (GgmlType, usize, u64)> {
    let mut per_type = BTreeMap::new();
    for info in file.tensors() {
        let entry =
            per_type
                .entry(info.ggml_type().id())
                .or_insert((info.ggml_type(), 0usize, 0u64));
        entry.1 += 1;
        entry.2 += info.n_bytes();
    }
    per_type
}

fn to_json(file: &GgufFile) -> Json {
    let metadata: Map<String, Json> = file
        .metadata()
        .map(|(key, value)| (key.to_string(), value_json(value)))
        .collect();
    let tensors: Vec<Json> = file
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name(),
                "type": t.ggml_type().name(),
                "shape": t.shape(),
                "offset": t.offset(),
                "bytes": t.n_bytes(),
            })
        })
        .collect();
    let bytes_per_type: Map<String, Json> = bytes_per_type(file)
        .values()
        .map(|(ty, count, bytes)| {
            (
                ty.name().to_string(),
                json!({ "tensors": count, "bytes": bytes }),
            )
        })
        .collect();
    json!({
        "version": file.version(),
        "alignment": file.alignment(),
        "architecture": file.architecture().ok(),
        "file_bytes": file.file_len(),
        "metadata": metadata,
        "tensor_count": file.tensors().len(),
        "tensor_bytes": file.tensors().iter().map(|t| t.n_bytes()).sum::<u64>(),
        "bytes_per_type": bytes_per_type,
        "tensors": tensors,
    })
}

fn value_json(value: MetaValue<'_>) -> Json {
    match value {
        MetaValue::U8(v) => v.into(),
        MetaValue::I8(v) => v.into(),
        MetaValue::U16(v) => v.into(),
        MetaValue::I16(v) => v.into(),
        MetaValue::U32(v) => v.into(),
        MetaValue::I32(v) => v.into(),
        MetaValue::U64(v) => v.into(),
        MetaValue::I64(v) => v.into(),
        // Through f32's shortest decimal form, so 1e-6 prints as 1e-6 and not as its f64 widening.
        MetaValue::F32(v) => v.to_string().parse::<f64>().map_or(Json::Null, Json::from),
        MetaValue::F64(v) => v.into(),
        MetaValue::Bool(v) => v.into(),
        MetaValue::String(s) => s.into(),
        MetaValue::Array(a) => array_json(a),
    }
}

fn array_json(array: MetaArray<'_>) -> Json {
    if array.len() > MAX_ARRAY_ELEMS {
        json!({ "array_of": array.elem_type().name(), "len": array.len() })
    } else {
        Json::Array(array.iter().map(value_json).collect())
    }
}

fn value_text(value: MetaValue<'_>) -> String {
    match value {
        MetaValue::String(s) if s.len() > 80 => {
            let cut = (0..=80).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            format!("{:?}… ({} bytes)", &s[..cut], s.len())
        }
        MetaValue::String(s) => format!("{s:?}"),
        MetaValue::Array(a) if a.len() > MAX_ARRAY_ELEMS => {
            format!("[{} × {}]", a.len(), a.elem_type())
        }
        MetaValue::Array(a) => {
            let items: Vec<String> = a.iter().map(value_text).collect();
            format!("[{}]", items.join(", "))
        }
        other => value_json(other).to_string(),
    }
}

fn write_text(out: &mut impl Write, file: &GgufFile, args: &InspectArgs) -> Result<()> {
    let arch = file.architecture().unwrap_or("(none)");
    writeln!(out, "file:          {}", args.file.display())?;
    writeln!(out, "gguf version:  {}", file.version())?;
    writeln!(out, "alignment:     {}", file.alignment())?;
    writeln!(out, "architecture:  {arch}")?;
    writeln!(out, "file size:     {} bytes", file.file_len())?;
    writeln!(out)?;
    writeln!(out, "metadata ({} keys):", file.metadata_len())?;
    for (key, value) in file.metadata() {
        writeln!(out, "  {key:<48} {}", value_text(value))?;
    }
    writeln!(out)?;
    writeln!(out, "tensors: {}", file.tensors().len())?;
    let mut total = 0u64;
    for (ty, count, bytes) in bytes_per_type(file).values() {
        writeln!(
            out,
            "  {:<8} {count:>6} tensors {bytes:>16} bytes",
            ty.name()
        )?;
        total += bytes;
    }
    writeln!(
        out,
        "  {:<8} {:>6} tensors {total:>16} bytes",
        "total",
        file.tensors().len()
    )?;
    if args.tensors {
        writeln!(out)?;
        writeln!(
            out,
            "{:<48} {:<8} {:<24} {:>12} {:>12}",
            "name", "type", "shape", "offset", "bytes"
        )?;
        for t in file.tensors() {
            let shape = format!("{:?}", t.shape());
            writeln!(
                out,
                "{:<48} {:<8} {shape:<24} {:>12} {:>12}",
                t.name(),
                t.ggml_type().name(),
                t.offset(),
                t.n_bytes()
            )?;
        }
    }
    Ok(())
}
