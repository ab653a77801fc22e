//! `cargo xtask synth`: real-size Gemma 4 GGUFs filled with finite random blocks.
//!
//! Decode speed depends on shapes and types, not on weight values, so benchmarks run on files
//! with the exact metadata keys, tensor names, shapes and type mix of the real ones. The layouts
//! come from `xtask/shapes/*.tsv` (copied from the reference listings of files llama.cpp loaded
//! and ran); summarised arrays are rebuilt: per-layer KV heads and the sliding pattern from the
//! tensor shapes, a 262,144-token vocabulary with valid merges and special tokens.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gguf::{Array, GgmlType, GgufWriter, Value};

/// One layout: `(metadata tsv, tensor tsv)`.
struct Layout {
    metadata: &'static str,
    tensors: &'static str,
}

fn layout(name: &str) -> Result<Layout> {
    Ok(match name {
        "gemma4-31b" => Layout {
            metadata: include_str!("../shapes/gemma4-31b.q4_k_m.metadata.tsv"),
            tensors: include_str!("../shapes/gemma4-31b.q4_k_m.tsv"),
        },
        "gemma4-26b-a4b" => Layout {
            metadata: include_str!("../shapes/gemma4-26b-a4b.q4_k_m.metadata.tsv"),
            tensors: include_str!("../shapes/gemma4-26b-a4b.q4_k_m.tsv"),
        },
        "gemma4-31b-assistant" => Layout {
            metadata: include_str!("../shapes/gemma4-31b-assistant.q8_0.metadata.tsv"),
            tensors: include_str!("../shapes/gemma4-31b-assistant.q8_0.tsv"),
        },
        "gemma4-31b-dflash" => Layout {
            metadata: include_str!("../shapes/gemma4-31b-dflash.q8_0.metadata.tsv"),
            tensors: include_str!("../shapes/gemma4-31b-dflash.q8_0.tsv"),
        },
        other => bail!(
            "no layout for '{other}' (known: gemma4-31b, gemma4-26b-a4b; drafters mtp and dflash for gemma4-31b)"
        ),
    })
}

/// A tensor row of a layout.
struct TensorRow {
    name: String,
    ty: GgmlType,
    shape: Vec<u64>,
}

fn tensor_rows(text: &str) -> Result<Vec<TensorRow>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 {
            bail!("shape table line {}: expected name, type, shape", i + 1);
        }
        let ty = GgmlType::from_name(cols[1])
            .with_context(|| format!("shape table line {}: unknown type {}", i + 1, cols[1]))?;
        let shape = cols[2]
            .split(',')
            .map(|d| d.parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("shape table line {}: bad shape {}", i + 1, cols[2]))?;
        rows.push(TensorRow {
            name: cols[0].to_string(),
            ty,
            shape,
        });
    }
    Ok(rows)
}

/// The requested weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    /// The layout's own mix (llama.cpp's Q4_K_M rule for targets, Q8_0 for drafters).
    Native,
    /// Every quantized tensor as Q8_0.
    Q8_0,
    /// Every quantized tensor as BF16.
    Bf16,
}

impl Quant {
    fn parse(s: &str) -> Result<Quant> {
        Ok(match s {
            "q4_k_m" => Quant::Native,
            "q8_0" => Quant::Q8_0,
            "bf16" => Quant::Bf16,
            other => bail!("--quant {other}: expected q4_k_m, q8_0 or bf16"),
        })
    }

    fn retype(self, ty: GgmlType) -> GgmlType {
        match (self, ty) {
            (_, GgmlType::F32) | (Quant::Native, _) => ty,
            (Quant::Q8_0, _) => GgmlType::Q8_0,
            (Quant::Bf16, _) => GgmlType::BF16,
        }
    }

    fn file_type(self, native: u32) -> u32 {
        match self {
            Quant::Native => native,
            Quant::Q8_0 => 7,
            Quant::Bf16 => 32,
        }
    }
}

/// Writes one synthetic file; returns its size in bytes.
pub fn write_model(model: &str, quant: Quant, out: &Path) -> Result<u64> {
    let layout = layout(model)?;
    let tensors = tensor_rows(layout.tensors)?;
    let metadata = metadata(&layout, &tensors, quant)?;
    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut w = GgufWriter::new(BufWriter::with_capacity(8 << 20, file));
    for (k, v) in metadata {
        w.add_metadata(k, v)?;
    }
    let mut planned = Vec::new();
    for t in &tensors {
        let ty = quant.retype(t.ty);
        if t.shape[0] % ty.block_elems() != 0 {
            bail!(
                "{}: row of {} is not a multiple of {}'s block",
                t.name,
                t.shape[0],
                ty.name()
            );
        }
        w.add_tensor(t.name.clone(), ty, &t.shape)?;
        planned.push((t.name.clone(), ty, t.shape.iter().product::<u64>()));
    }
    let mut data = w.write_header()?;
    for (name, ty, elems) in planned {
        let mut src = RandomBlocks::new(&name, ty, elems)?;
        data.write_tensor_from(&name, &mut src)?;
    }
    let writer = data.finish()?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    Ok(file.metadata()?.len())
}

fn metadata(layout: &Layout, tensors: &[TensorRow], quant: Quant) -> Result<Vec<(String, Value)>> {
    let arch = layout
        .metadata
        .lines()
        .find_map(|l| l.strip_prefix("general.architecture\tSTRING\t"))
        .context("layout has no general.architecture")?
        .to_string();
    let mut out = Vec::new();
    // Scalars first: summarised arrays are rebuilt from head sizes stated later in the table.
    let scalars: std::collections::HashMap<String, u32> = layout
        .metadata
        .lines()
        .filter_map(|l| {
            let mut c = l.splitn(3, '\t');
            let (k, t, v) = (c.next()?, c.next()?, c.next()?);
            (t == "UINT32").then(|| Some((k.to_string(), v.parse().ok()?)))?
        })
        .collect();
    for (i, line) in layout.metadata.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.splitn(3, '\t').collect();
        let [key, ty, value] = cols[..] else {
            bail!("metadata table line {}: expected key, type, value", i + 1);
        };
        let bad = || format!("metadata table line {}: bad {ty} value '{value}'", i + 1);
        let v = match ty {
            "STRING" => Value::String(value.to_string()),
            "UINT32" => Value::U32(value.parse().with_context(bad)?),
            "INT32" => Value::I32(value.parse().with_context(bad)?),
            "FLOAT32" => Value::F32(value.parse().with_context(bad)?),
            "BOOL" => Value::Bool(value == "True"),
            "ARRAY" => Value::Array(array(key, value, &arch, tensors, &scalars)?),
            other => bail!("metadata table line {}: unknown type {other}", i + 1),
        };
        let v = match (key, v) {
            ("general.file_type", Value::U32(ft)) => Value::U32(quant.file_type(ft)),
            (_, v) => v,
        };
        out.push((key.to_string(), v));
    }
    Ok(out)
}

/// An array value: written inline in the table, or summarised as `array[N] of T` and rebuilt.
fn array(
    key: &str,
    value: &str,
    arch: &str,
    tensors: &[TensorRow],
    scalars: &std::collections::HashMap<String, u32>,
) -> Result<Array> {
    if let Some(list) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        let items: Vec<&str> = list.split(',').map(str::trim).collect();
        if items.iter().all(|s| *s == "True" || *s == "False") {
            return Ok(Array::Bool(items.iter().map(|s| *s == "True").collect()));
        }
        let ints = items
            .iter()
            .map(|s| s.parse::<i32>())
            .collect::<Result<Vec<_>, _>>();
        return Ok(Array::I32(
            ints.with_context(|| format!("{key}: cannot read '{value}'"))?,
        ));
    }
    let n: usize = value
        .strip_prefix("array[")
        .and_then(|v| v.split(']').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{key}: cannot read '{value}'"))?;
    let layer_dim = |l: usize, which: &str| {
        tensors
            .iter()
            .find(|t| t.name == format!("blk.{l}.{which}.weight"))
            .map(|t| t.shape.clone())
    };
    let swa = scalars
        .get(&format!("{arch}.attention.key_length_swa"))
        .copied();
    let full = scalars
        .get(&format!("{arch}.attention.key_length"))
        .copied();
    let is_sliding = |l: usize| -> Result<bool> {
        let q_norm = layer_dim(l, "attn_q_norm")
            .with_context(|| format!("{key}: layer {l} has no attn_q_norm"))?;
        Ok(Some(q_norm[0] as u32) == swa && swa != full)
    };
    Ok(match key.strip_prefix(arch).unwrap_or(key) {
        ".attention.sliding_window_pattern" => {
            Array::Bool((0..n).map(is_sliding).collect::<Result<_>>()?)
        }
        ".attention.head_count_kv" => Array::I32(
            (0..n)
                .map(|l| {
                    let k = layer_dim(l, "attn_k")
                        .with_context(|| format!("{key}: layer {l} has no attn_k"))?;
                    let hd = if is_sliding(l)? { swa } else { full }.context("no key_length")?;
                    Ok((k[1] / u64::from(hd)) as i32)
                })
                .collect::<Result<_>>()?,
        ),
        _ => match key {
            "tokenizer.ggml.tokens" => Array::String(vocabulary(n)),
            "tokenizer.ggml.scores" => Array::F32((0..n).map(|i| -(i as f32)).collect()),
            "tokenizer.ggml.token_type" => Array::I32(
                vocabulary(n)
                    .iter()
                    .map(|t| match t.as_str() {
                        _ if t.starts_with("<0x") => 6,
                        "<pad>" | "<eos>" | "<bos>" | "<unk>" | "<mask>" | "<|turn>"
                        | "<turn|>" => 3,
                        _ => 1,
                    })
                    .collect(),
            ),
            "tokenizer.ggml.merges" => Array::String(merges(n)),
            _ => bail!("{key}: no rule to rebuild a summarised array"),
        },
    })
}

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

/// A synthetic vocabulary: Gemma's special ids, byte tokens, letters, letter pairs (the merge
/// results), then numbered pieces.
fn vocabulary(n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("▁tok{i}")).collect();
    for (i, s) in [
        (0, "<pad>"),
        (1, "<eos>"),
        (2, "<bos>"),
        (3, "<unk>"),
        (4, "<mask>"),
        (105, "<|turn>"),
        (106, "<turn|>"),
    ] {
        if i < n {
            v[i] = s.into();
        }
    }
    let mut at = 300;
    for b in 0..256 {
        if at < n {
            v[at] = format!("<0x{b:02X}>");
        }
        at += 1;
    }
    for &c in LETTERS {
        if at < n {
            v[at] = (c as char).to_string();
        }
        at += 1;
    }
    for &a in LETTERS {
        for &b in LETTERS {
            if at < n {
                v[at] = format!("{}{}", a as char, b as char);
            }
            at += 1;
        }
    }
    v
}

fn merges(n: usize) -> Vec<String> {
    LETTERS
        .iter()
        .flat_map(|&a| {
            LETTERS
                .iter()
                .map(move |&b| format!("{} {}", a as char, b as char))
        })
        .take(n)
        .collect()
}

/// A `Read` of whole random blocks of one type with finite, small scales.
struct RandomBlocks {
    ty: GgmlType,
    block_bytes: usize,
    blocks_left: u64,
    rng: u64,
    buf: Vec<u8>,
    pos: usize,
    /// `(offset, is_norm)` of the f16 scale fields within a block.
    scales: &'static [usize],
    /// How F32 values are drawn.
    f32_kind: F32Kind,
    /// Range of the f16 scales: chosen per type so that weights stay below ~0.2 in magnitude,
    /// like trained ones (scale × largest sub-scale × largest quant).
    d_range: (f32, f32),
}

#[derive(Clone, Copy)]
enum F32Kind {
    /// Around 1 (norm weights, output scales, rope factors).
    One,
    /// Small, centred on 0.
    Small,
}

impl RandomBlocks {
    fn new(name: &str, ty: GgmlType, elems: u64) -> Result<RandomBlocks> {
        let scales: &'static [usize] = match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q2_K => &[80, 82],
            GgmlType::Q3_K => &[108],
            GgmlType::Q6_K => &[208],
            other => bail!("{name}: synthesizing {} is not supported", other.name()),
        };
        let d_range = match ty {
            GgmlType::Q2_K => (2e-3, 4e-3),
            GgmlType::Q3_K => (5e-4, 1.5e-3),
            GgmlType::Q4_K | GgmlType::Q5_K => (5e-5, 1.5e-4),
            GgmlType::Q6_K => (5e-6, 2e-5),
            GgmlType::Q8_0 => (2e-4, 6e-4),
            _ => (2e-3, 6e-3),
        };
        let f32_kind =
            if name.contains("norm") || name.contains("scale") || name.contains("rope_freqs") {
                F32Kind::One
            } else {
                F32Kind::Small
            };
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for b in name.bytes() {
            seed = (seed ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
        Ok(RandomBlocks {
            ty,
            block_bytes: ty.block_bytes() as usize,
            blocks_left: elems / ty.block_elems(),
            rng: seed,
            buf: Vec::new(),
            pos: 0,
            scales,
            f32_kind,
            d_range,
        })
    }

    fn next_u64(&mut self) -> u64 {
        // wyrand: fast and good enough for filler bytes.
        self.rng = self.rng.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.rng) * u128::from(self.rng ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    }

    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn refill(&mut self) {
        let per = ((4usize << 20) / self.block_bytes).max(1) as u64;
        let n = per.min(self.blocks_left) as usize;
        self.blocks_left -= n as u64;
        self.buf.resize(n * self.block_bytes, 0);
        self.pos = 0;
        match self.ty {
            GgmlType::F32 => {
                for i in 0..n {
                    let u = self.unit();
                    let x = match self.f32_kind {
                        F32Kind::One => 0.9 + 0.2 * u,
                        F32Kind::Small => 0.1 * (u - 0.5),
                    };
                    self.buf[i * 4..i * 4 + 4].copy_from_slice(&x.to_le_bytes());
                }
            }
            GgmlType::F16 | GgmlType::BF16 => {
                for i in 0..n {
                    let x = 0.1 * (self.unit() - 0.5);
                    let bits = if self.ty == GgmlType::F16 {
                        half::f16::from_f32(x).to_bits()
                    } else {
                        half::bf16::from_f32(x).to_bits()
                    };
                    self.buf[i * 2..i * 2 + 2].copy_from_slice(&bits.to_le_bytes());
                }
            }
            _ => {
                let mut chunks = std::mem::take(&mut self.buf);
                for c in chunks.chunks_mut(8) {
                    let r = self.next_u64().to_le_bytes();
                    c.copy_from_slice(&r[..c.len()]);
                }
                for block in chunks.chunks_mut(self.block_bytes) {
                    for &off in self.scales {
                        let d = {
                            let (lo, hi) = self.d_range;
                            half::f16::from_f32(lo + (hi - lo) * self.unit()).to_bits()
                        };
                        block[off..off + 2].copy_from_slice(&d.to_le_bytes());
                    }
                }
                self.buf = chunks;
            }
        }
    }
}

impl Read for RandomBlocks {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.blocks_left == 0 {
                return Ok(0);
            }
            self.refill();
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `cargo xtask synth --model M [--quant Q] [--drafter mtp|dflash] --out DIR`.
pub fn run(args: &[String]) -> Result<()> {
    let mut model = None;
    let mut quant = Quant::Native;
    let mut drafter = None;
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(value()?.clone()),
            "--quant" => quant = Quant::parse(value()?)?,
            "--drafter" => drafter = Some(value()?.clone()),
            "--out" => out = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other}"),
        }
    }
    let model = model.context("--model gemma4-31b|gemma4-26b-a4b is required")?;
    let out = out.context("--out DIR is required")?;
    std::fs::create_dir_all(&out)?;
    let q = match quant {
        Quant::Native => "q4_k_m",
        Quant::Q8_0 => "q8_0",
        Quant::Bf16 => "bf16",
    };
    let mut files = vec![(model.clone(), quant, out.join(format!("{model}.{q}.gguf")))];
    if let Some(d) = drafter {
        let name = match d.as_str() {
            "mtp" => format!("{model}-assistant"),
            "dflash" => format!("{model}-dflash"),
            other => bail!("--drafter {other}: expected mtp or dflash"),
        };
        files.push((
            name.clone(),
            Quant::Native,
            out.join(format!("{name}.q8_0.gguf")),
        ));
    }
    for (name, quant, path) in files {
        let t0 = std::time::Instant::now();
        let bytes = write_model(&name, quant, &path)?;
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{}: {:.2} GiB in {s:.1} s ({:.2} GB/s)",
            path.display(),
            bytes as f64 / (1u64 << 30) as f64,
            bytes as f64 / s / 1e9
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(model: &str) -> Vec<(String, Value)> {
        let layout = layout(model).unwrap();
        let tensors = tensor_rows(layout.tensors).unwrap();
        metadata(&layout, &tensors, Quant::Native).unwrap()
    }

    fn get<'a>(m: &'a [(String, Value)], key: &str) -> &'a Value {
        &m.iter().find(|(k, _)| k == key).unwrap().1
    }

    #[test]
    fn summarised_arrays_are_rebuilt_from_the_tensor_shapes() {
        let m = meta("gemma4-31b");
        // The 31B pattern: five sliding layers (16 KV heads of 256) then one full (4 of 512).
        let Value::Array(Array::Bool(sliding)) = get(&m, "gemma4.attention.sliding_window_pattern")
        else {
            panic!()
        };
        assert_eq!(sliding.len(), 60);
        assert!(sliding.iter().enumerate().all(|(l, &s)| s == (l % 6 != 5)));
        let Value::Array(Array::I32(kv)) = get(&m, "gemma4.attention.head_count_kv") else {
            panic!()
        };
        assert!(kv
            .iter()
            .enumerate()
            .all(|(l, &h)| h == if l % 6 == 5 { 4 } else { 16 }));
        // Inline arrays of the drafters are read as written.
        let d = meta("gemma4-31b-dflash");
        let Value::Array(Array::I32(ids)) = get(&d, "dflash.target_layers") else {
            panic!()
        };
        assert_eq!(ids, &[2, 13, 24, 36, 47, 58]);
        // --quant changes the declared file type.
        let layout = layout("gemma4-31b").unwrap();
        let tensors = tensor_rows(layout.tensors).unwrap();
        let q8 = metadata(&layout, &tensors, Quant::Q8_0).unwrap();
        assert!(matches!(get(&q8, "general.file_type"), Value::U32(7)));
        assert!(layout_error_names_the_model());
    }

    fn layout_error_names_the_model() -> bool {
        layout("gemma4-e4b")
            .err()
            .unwrap()
            .to_string()
            .contains("'gemma4-e4b'")
    }

    #[test]
    fn vocabulary_has_specials_bytes_and_valid_merges() {
        let v = vocabulary(262_144);
        assert_eq!(v.len(), 262_144);
        assert_eq!(
            (v[1].as_str(), v[2].as_str(), v[4].as_str(), v[106].as_str()),
            ("<eos>", "<bos>", "<mask>", "<turn|>")
        );
        let set: std::collections::HashSet<&str> = v.iter().map(String::as_str).collect();
        assert_eq!(set.len(), v.len(), "tokens are unique");
        assert!((0..256).all(|b| set.contains(format!("<0x{b:02X}>").as_str())));
        let merges = merges(81);
        assert_eq!(merges.len(), 81);
        for m in &merges {
            let (a, b) = m.split_once(' ').unwrap();
            assert!(
                set.contains(a) && set.contains(b) && set.contains(format!("{a}{b}").as_str()),
                "{m}"
            );
        }
    }

    #[test]
    fn random_blocks_dequantize_to_finite_small_values() {
        use std::io::Read;
        for ty in [
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q5_K,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::F32,
        ] {
            let elems = ty.block_elems() * 64;
            let mut src = RandomBlocks::new("blk.0.ffn_up.weight", ty, elems).unwrap();
            let mut bytes = Vec::new();
            src.read_to_end(&mut bytes).unwrap();
            assert_eq!(
                bytes.len() as u64,
                elems / ty.block_elems() * ty.block_bytes(),
                "{}",
                ty.name()
            );
            let vals = gguf::quant::dequantize_to_vec(ty, &bytes).unwrap();
            let max = vals.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(vals.iter().all(|v| v.is_finite()), "{}", ty.name());
            assert!(max > 0.01 && max < 0.5, "{}: max |w| {max}", ty.name());
        }
        // Norm weights sit around 1.
        let mut src = RandomBlocks::new("blk.0.attn_norm.weight", GgmlType::F32, 5376).unwrap();
        let mut bytes = Vec::new();
        src.read_to_end(&mut bytes).unwrap();
        let v = gguf::quant::dequantize_to_vec(GgmlType::F32, &bytes).unwrap();
        assert!(v.iter().all(|&x| (0.9..=1.1).contains(&x)));
    }
}
