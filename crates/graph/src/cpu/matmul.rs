//! Row gathers and matrix products over weights of any supported type.
//!
//! A weight row is dequantized into a per-thread f32 scratch row and then dotted with every
//! activation row, so each weight byte is read once per product whatever the batch size.

use rayon::prelude::*;

use super::{Arg, Data};
use crate::graph::Node;

type Res<T> = std::result::Result<T, String>;

/// Output rows handled by one task.
const ROWS_PER_TASK: usize = 16;

#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociation flags.
    let mut acc = [0.0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// Weight row `r` (of `k` elements) as f32: borrowed for f32 weights, else dequantized into
/// `scratch`.
fn weight_row<'a>(w: &'a Data, r: usize, k: usize, scratch: &'a mut [f32]) -> Res<&'a [f32]> {
    match w {
        Data::F32(v) => Ok(&v[r * k..(r + 1) * k]),
        other => {
            other.read_f32(r * k, scratch).map_err(|e| e.to_string())?;
            Ok(scratch)
        }
    }
}

pub(crate) fn get_rows(table: &Arg<'_>, ids: &Arg<'_>, out: &mut Data) -> Res<()> {
    let ts = table.node.shape();
    let (k, n_rows) = (ts.ne(0), ts.ne(1));
    let ids = ids.i32().map_err(|e| e.to_string())?;
    let out = out.as_f32_mut().map_err(|e| e.to_string())?;
    for (j, &id) in ids.iter().enumerate() {
        let row = usize::try_from(id)
            .ok()
            .filter(|&r| r < n_rows)
            .ok_or_else(|| format!("row id {id} at index {j} is outside 0..{n_rows}"))?;
        table
            .data
            .read_f32(row * k, &mut out[j * k..(j + 1) * k])
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `v` rounded to the nearest f16 (ties to even) and back.
fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// The power of two an activation row is divided by before rounding to f16, as a GPU's
/// `rows_to_f16` does: the smallest 2^e (e ≥ 0) with max |x| ≤ 32768 · 2^e, so rows past the
/// f16 range stay finite; 1 for rows within it.
fn row_scale(row: &[f32]) -> f32 {
    let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut e = 0;
    while e < 128 && max > 32768.0 * 2f32.powi(e) {
        e += 1;
    }
    2f32.powi(e)
}

/// out = W·x for every activation row. With `f16` both operands are first rounded to f16, the
/// activations after a power-of-two scale per row ([`row_scale`],
/// [`super::CpuBackend::set_f16_products`]).
pub(crate) fn matmul(w: &Arg<'_>, x: &Arg<'_>, node: &Node, out: &mut Data, f16: bool) -> Res<()> {
    let ws = w.node.shape();
    let (k, n) = (ws.ne(0), ws.ne(1));
    let xl = x.layout();
    let m = xl.shape.n_rows();
    let xs = x.f32().map_err(|e| e.to_string())?;
    // With f16 operands, each activation row scaled by 1 / scales[j] (a power of two) before
    // rounding, and its products by scales[j] after.
    let mut scales = vec![1.0f32; m];
    let rounded: Vec<Vec<f32>> = if f16 {
        (0..m)
            .map(|r| {
                let o = xl.row_offset(r);
                let row = &xs[o..o + k];
                scales[r] = row_scale(row);
                let inv = 1.0 / scales[r];
                row.iter().map(|&v| round_f16(v * inv)).collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<&[f32]> = if f16 {
        rounded.iter().map(Vec::as_slice).collect()
    } else {
        (0..m)
            .map(|r| &xs[xl.row_offset(r)..xl.row_offset(r) + k])
            .collect()
    };
    let out = &mut out.as_f32_mut().map_err(|e| e.to_string())?[..node.shape().n_elems()];
    let n_tasks = n.div_ceil(ROWS_PER_TASK);
    let blocks: Vec<Res<Vec<f32>>> = (0..n_tasks)
        .into_par_iter()
        .map(|task| {
            let r0 = task * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(n);
            let mut scratch = vec![0.0f32; k];
            let mut block = vec![0.0f32; (r1 - r0) * m];
            for r in r0..r1 {
                let mut wr = weight_row(w.data, r, k, &mut scratch)?;
                let mut rounded_row = Vec::new();
                if f16 {
                    rounded_row.extend(wr.iter().map(|&v| round_f16(v)));
                    wr = &rounded_row;
                }
                for (j, xr) in rows.iter().enumerate() {
                    block[(r - r0) * m + j] = dot(wr, xr);
                }
            }
            Ok(block)
        })
        .collect();
    for (task, block) in blocks.into_iter().enumerate() {
        let block = block?;
        let r0 = task * ROWS_PER_TASK;
        for (i, chunk) in block.chunks(m).enumerate() {
            for (j, &v) in chunk.iter().enumerate() {
                out[j * n + r0 + i] = v * scales[j];
            }
        }
    }
    Ok(())
}

/// One activation row quantized as [`crate::Op::MatMulQ8`] says: int8 values and one f32 scale
/// per 32 elements.
pub(crate) fn quantize_q8_row(row: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(row.len());
    let mut d = Vec::with_capacity(row.len() / 32);
    for block in row.chunks(32) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        // `as` saturates and maps NaN to 0.
        q.extend(
            block
                .iter()
                .map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8),
        );
        d.push(scale);
    }
    (q, d)
}

/// The integer weights of each 32-element block of a [`crate::Op::MatMulQ8`] weight row and
/// their f32 scale, into `out` (cleared first): Q8_0's quants and `d`; for Q6_K, `scale · (q −
/// 32)` of its two 16-weight sub-blocks and the group's `d`.
fn q8_weight_blocks(dtype: crate::DType, row: &[u8], out: &mut Vec<([i32; 32], f32)>) {
    out.clear();
    match dtype {
        crate::DType::Q6_K => out.extend(row.chunks_exact(210).flat_map(|group| {
            let (levels, scales, d) = gguf::quant::q6_k_levels(group.try_into().unwrap());
            (0..8).map(move |b| {
                let w = std::array::from_fn(|j| {
                    let i = 32 * b + j;
                    i32::from(scales[i / 16]) * i32::from(levels[i])
                });
                (w, d)
            })
        })),
        _ => out.extend(row.chunks_exact(34).map(|blk| {
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            (std::array::from_fn(|j| i32::from(blk[2 + j] as i8)), d)
        })),
    }
}

/// out = W·x for Q8_0 or Q6_K weights and q8-quantized activation rows
/// ([`crate::Op::MatMulQ8`]): per 32-element block the exact integer dot product times
/// `d_w · d_x`, the blocks added in order.
pub(crate) fn matmul_q8(w: &Arg<'_>, x: &Arg<'_>, node: &Node, out: &mut Data) -> Res<()> {
    let ws = w.node.shape();
    let (k, n) = (ws.ne(0), ws.ne(1));
    let (dtype, bytes) = match w.data {
        Data::Bytes(dt @ (crate::DType::Q8_0 | crate::DType::Q6_K), b) => (*dt, b.as_slice()),
        Data::Bytes(dt, _) => {
            return Err(format!("matmul_q8 needs Q8_0 or Q6_K weights, found {dt}"))
        }
        other => {
            return Err(format!(
                "matmul_q8 needs Q8_0 or Q6_K weights, found {}",
                other.kind()
            ))
        }
    };
    let block = dtype.block_elems() as usize;
    if k % block != 0 {
        return Err(format!(
            "{dtype} rows of {k} weights are not whole blocks of {block}"
        ));
    }
    let row_bytes = k / block * dtype.block_bytes() as usize;
    if bytes.len() < n * row_bytes {
        return Err(format!(
            "{dtype} weight of {} bytes is shorter than {n} rows of {row_bytes}",
            bytes.len()
        ));
    }
    let xl = x.layout();
    let m = xl.shape.n_rows();
    if m == 0 || n == 0 {
        return Ok(());
    }
    let xs = x.f32().map_err(|e| e.to_string())?;
    let rows: Vec<(Vec<i8>, Vec<f32>)> = (0..m)
        .map(|r| quantize_q8_row(&xs[xl.row_offset(r)..xl.row_offset(r) + k]))
        .collect();
    let out = &mut out.as_f32_mut().map_err(|e| e.to_string())?[..node.shape().n_elems()];
    let dot_q8 = |wb: &[([i32; 32], f32)], (q, d): &(Vec<i8>, Vec<f32>)| {
        let mut acc = 0.0f32;
        for (b, (wq, dw)) in wb.iter().enumerate() {
            let isum: i32 = wq
                .iter()
                .zip(&q[32 * b..32 * b + 32])
                .map(|(&a, &c)| a * i32::from(c))
                .sum();
            acc = (dw * d[b]).mul_add(isum as f32, acc);
        }
        acc
    };
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let (r0, r1) = (task * ROWS_PER_TASK, ((task + 1) * ROWS_PER_TASK).min(n));
            let mut wb = Vec::with_capacity(k / 32);
            let mut sums = Vec::with_capacity((r1 - r0) * m);
            for r in r0..r1 {
                q8_weight_blocks(dtype, &bytes[r * row_bytes..(r + 1) * row_bytes], &mut wb);
                sums.extend(rows.iter().map(|x| dot_q8(&wb, x)));
            }
            sums
        })
        .collect();
    for (task, block) in blocks.iter().enumerate() {
        let r0 = task * ROWS_PER_TASK;
        for (i, chunk) in block.chunks(m).enumerate() {
            for (j, &v) in chunk.iter().enumerate() {
                out[j * n + r0 + i] = v;
            }
        }
    }
    Ok(())
}

pub(crate) fn matmul_id(
    w: &Arg<'_>,
    x: &Arg<'_>,
    ids: &Arg<'_>,
    node: &Node,
    out: &mut Data,
) -> Res<()> {
    let ws = w.node.shape();
    let (k, n, n_expert) = (ws.ne(0), ws.ne(1), ws.ne(2));
    let xl = x.layout();
    let x_slots = xl.shape.ne(1);
    let xs = x.f32().map_err(|e| e.to_string())?;
    let ids = ids.i32().map_err(|e| e.to_string())?;
    let is = node.shape();
    let (n_used, n_tok) = (is.ne(1), is.ne(2));
    let out = &mut out.as_f32_mut().map_err(|e| e.to_string())?[..is.n_elems()];
    let results: Vec<Res<Vec<f32>>> = (0..n_used * n_tok)
        .into_par_iter()
        .map(|pair| {
            let (j, t) = (pair % n_used, pair / n_used);
            let id = ids[j + t * n_used];
            let e = usize::try_from(id)
                .ok()
                .filter(|&e| e < n_expert)
                .ok_or_else(|| {
                    format!("expert id {id} (slot {j}, token {t}) is outside 0..{n_expert}")
                })?;
            let xi = xl.row_offset(if x_slots == 1 { t } else { j + t * x_slots });
            let xr = &xs[xi..xi + k];
            let mut scratch = vec![0.0f32; k];
            let mut col = vec![0.0f32; n];
            for (r, c) in col.iter_mut().enumerate() {
                *c = dot(weight_row(w.data, e * n + r, k, &mut scratch)?, xr);
            }
            Ok(col)
        })
        .collect();
    for (pair, col) in results.into_iter().enumerate() {
        out[pair * n..(pair + 1) * n].copy_from_slice(&col?);
    }
    Ok(())
}
