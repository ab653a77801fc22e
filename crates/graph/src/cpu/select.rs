//! Selection ops: argmax, top-k, MoE routing weights, and row writes into states.

use half::f16;

use super::{Arg, Data};
use crate::error::Result;
use crate::graph::Node;

type Res<T> = std::result::Result<T, String>;

pub(crate) fn argmax(x: &Arg<'_>, out: &mut Data) -> Result<()> {
    let l = x.layout();
    let n = l.shape.ne(0);
    let xs = x.f32()?;
    let out = out.as_i32_mut()?;
    for r in 0..l.shape.n_rows() {
        let row = &xs[l.row_offset(r)..l.row_offset(r) + n];
        // The first index of the largest non-NaN value (0 when there is none), as the CUDA
        // kernels give it; without NaNs, the first index of the maximum, as torch.argmax and
        // ggml do.
        let mut best: Option<(usize, f32)> = None;
        for (i, &v) in row.iter().enumerate() {
            if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        }
        out[r] = best.map_or(0, |(i, _)| i as i32);
    }
    Ok(())
}

/// Indices of the `k` largest of `row`, largest first; ties keep the lower index first.
pub(crate) fn top_k_indices(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

pub(crate) fn top_k(k: usize, x: &Arg<'_>, out: &mut Data) -> Result<()> {
    let l = x.layout();
    let n = l.shape.ne(0);
    let xs = x.f32()?;
    let out = out.as_i32_mut()?;
    for r in 0..l.shape.n_rows() {
        let row = &xs[l.row_offset(r)..l.row_offset(r) + n];
        for (j, i) in top_k_indices(row, k).into_iter().enumerate() {
            out[r * k + j] = i as i32;
        }
    }
    Ok(())
}

pub(crate) fn moe_weights(
    renormalize: bool,
    probs: &Arg<'_>,
    ids: &Arg<'_>,
    scale: Option<&Arg<'_>>,
    out: &mut Data,
) -> Res<()> {
    let pl = probs.layout();
    let n_expert = pl.shape.ne(0);
    let ps = probs.f32().map_err(|e| e.to_string())?;
    let il = ids.layout();
    let (k, n_tok) = (il.shape.ne(0), il.shape.ne(1));
    let is = ids.i32().map_err(|e| e.to_string())?;
    let scale = scale
        .map(|s| s.data.to_f32())
        .transpose()
        .map_err(|e| e.to_string())?;
    let out = out.as_f32_mut().map_err(|e| e.to_string())?;
    for t in 0..n_tok {
        let row = &ps[pl.row_offset(t)..pl.row_offset(t) + n_expert];
        let mut sum = 0.0f32;
        for j in 0..k {
            let id = is[il.index([j, t, 0, 0])];
            let e = usize::try_from(id)
                .ok()
                .filter(|&e| e < n_expert)
                .ok_or_else(|| format!("expert id {id} is outside 0..{n_expert}"))?;
            out[j + t * k] = row[e];
            sum += row[e];
        }
        for j in 0..k {
            if renormalize && sum > 0.0 {
                out[j + t * k] /= sum;
            }
            if let Some(s) = &scale {
                out[j + t * k] *= s[is[il.index([j, t, 0, 0])] as usize];
            }
        }
    }
    Ok(())
}

/// [`crate::Op::MoeSum`]: out[i, t] = Σ_j x[i, j, t]·w[j, t], multiplied then added in j order.
pub(crate) fn moe_sum(x: &Arg<'_>, w: &Arg<'_>, out: &mut Data) -> Res<()> {
    let (xl, wl) = (x.layout(), w.layout());
    let (h, k, n_tok) = (xl.shape.ne(0), xl.shape.ne(1), xl.shape.ne(2));
    let xs = x.f32().map_err(|e| e.to_string())?;
    let ws = w.f32().map_err(|e| e.to_string())?;
    let out = out.as_f32_mut().map_err(|e| e.to_string())?;
    for t in 0..n_tok {
        for i in 0..h {
            let mut s = xs[xl.index([i, 0, t, 0])] * ws[wl.index([0, t, 0, 0])];
            for j in 1..k {
                s += xs[xl.index([i, j, t, 0])] * ws[wl.index([j, t, 0, 0])];
            }
            out[i + t * h] = s;
        }
    }
    Ok(())
}

pub(crate) fn write_rows(src: &Arg<'_>, slots: &Arg<'_>, node: &Node, dst: &mut Data) -> Res<()> {
    let sl = src.layout();
    let row = sl.shape.ne(0);
    let dst_rows = node.shape().n_elems() / row.max(1);
    let xs = src.f32().map_err(|e| e.to_string())?;
    let slots = slots.i32().map_err(|e| e.to_string())?;
    let base = node.layout.offset;
    for (i, &slot) in slots.iter().enumerate() {
        let s = usize::try_from(slot)
            .ok()
            .filter(|&s| s < dst_rows)
            .ok_or_else(|| format!("slot {slot} (row {i}) is outside 0..{dst_rows}"))?;
        let from = &xs[sl.row_offset(i)..sl.row_offset(i) + row];
        let at = base + s * row;
        match dst {
            Data::F32(v) => v[at..at + row].copy_from_slice(from),
            Data::F16(v) => {
                for (o, &x) in v[at..at + row].iter_mut().zip(from) {
                    *o = f16::from_f32(x);
                }
            }
            _ => return Err("destination must be an f32 or f16 state".into()),
        }
    }
    Ok(())
}
