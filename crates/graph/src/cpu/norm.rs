//! Row-wise ops: RMS normalisation, rotary embedding, softmax.

use rayon::prelude::*;

use super::{Arg, Data};
use crate::error::Result;
use crate::op::RopeParams;

pub(crate) fn rms_norm(
    eps: f32,
    x: &Arg<'_>,
    weight: Option<&Arg<'_>>,
    out: &mut Data,
) -> Result<()> {
    let l = x.layout();
    let n = l.shape.ne(0);
    let rows = l.shape.n_rows();
    let xs = x.f32()?;
    let w = weight.map(|w| w.data.to_f32()).transpose()?;
    let out = &mut out.as_f32_mut()?[..n * rows];
    out.par_chunks_mut(n.max(1)).enumerate().for_each(|(r, o)| {
        let xr = &xs[l.row_offset(r)..l.row_offset(r) + n];
        let mean_sq = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
        let inv = (1.0 / (mean_sq + f64::from(eps)).sqrt()) as f32;
        match &w {
            Some(w) => {
                for ((o, &v), &wv) in o.iter_mut().zip(xr).zip(w.iter()) {
                    *o = v * inv * wv;
                }
            }
            None => {
                for (o, &v) in o.iter_mut().zip(xr) {
                    *o = v * inv;
                }
            }
        }
    });
    Ok(())
}

/// The rotation frequencies of RoPE: `theta^(−2i/n_rot) / factor_i` for `i < n_rot/2`,
/// computed in f32 as the reference implementations do.
pub(crate) fn rope_freqs(params: &RopeParams, factors: Option<&[f32]>) -> Vec<f32> {
    (0..params.n_rot / 2)
        .map(|i| {
            let f = 1.0 / params.theta.powf((2 * i) as f32 / params.n_rot as f32);
            match factors {
                Some(ff) => f / ff[i],
                None => f,
            }
        })
        .collect()
}

pub(crate) fn rope(
    params: &RopeParams,
    x: &Arg<'_>,
    pos: &Arg<'_>,
    factors: Option<&Arg<'_>>,
    out: &mut Data,
) -> Result<()> {
    let l = x.layout();
    let d = l.shape.dims();
    let (n_dims, n_heads) = (d[0], d[1]);
    let xs = x.f32()?;
    let pos = pos.i32()?;
    let factors = factors.map(|f| f.data.to_f32()).transpose()?;
    let freqs = rope_freqs(params, factors.as_deref());
    let half = params.n_rot / 2;
    let out = &mut out.as_f32_mut()?[..l.shape.n_elems()];
    out.par_chunks_mut(n_dims).enumerate().for_each(|(r, o)| {
        let t = r / n_heads;
        let xr = &xs[l.row_offset(r)..l.row_offset(r) + n_dims];
        o.copy_from_slice(xr);
        let p = pos[t] as f32;
        for (i, &f) in freqs.iter().enumerate() {
            let (sin, cos) = (p * f).sin_cos();
            let (x0, x1) = (xr[i], xr[i + half]);
            o[i] = x0 * cos - x1 * sin;
            o[i + half] = x0 * sin + x1 * cos;
        }
    });
    Ok(())
}

pub(crate) fn softmax(x: &Arg<'_>, out: &mut Data) -> Result<()> {
    let l = x.layout();
    let n = l.shape.ne(0);
    let xs = x.f32()?;
    let out = &mut out.as_f32_mut()?[..l.shape.n_elems()];
    out.par_chunks_mut(n.max(1)).enumerate().for_each(|(r, o)| {
        let xr = &xs[l.row_offset(r)..l.row_offset(r) + n];
        softmax_into(xr, o);
    });
    Ok(())
}

/// Writes softmax(`x`) into `out` (max-subtracted for stability).
pub(crate) fn softmax_into(x: &[f32], out: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - max).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}
