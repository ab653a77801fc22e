//! Attention of a batch of queries over a K/V store indexed by absolute position.
//!
//! For each (token, head) the visible positions form one range, from the layout (linear or
//! ring), the number of valid positions `n_kv` and the mask kind; scores use a running
//! (online) softmax so no score vector is stored.

use rayon::prelude::*;

use super::matmul::dot;
use super::{Arg, Data};
use crate::graph::Node;
use crate::op::{AttnMask, AttnParams, KvLayout};

type Res<T> = std::result::Result<T, String>;

/// The positions `[lo, hi]` a query at `q` may see, or `None`.
pub(crate) fn visible_range(
    params: &AttnParams,
    q: i64,
    n_kv: i64,
    cap: i64,
) -> Option<(i64, i64)> {
    let lo_valid = match params.kv_layout {
        KvLayout::Linear => 0,
        KvLayout::Ring => (n_kv - cap).max(0),
    };
    let hi_valid = n_kv - 1;
    let (lo, hi) = match params.mask {
        AttnMask::None | AttnMask::Explicit => (lo_valid, hi_valid),
        AttnMask::Causal => (lo_valid, hi_valid.min(q)),
        AttnMask::SlidingWindow { window } => {
            (lo_valid.max(q - window as i64 + 1), hi_valid.min(q))
        }
    };
    (lo <= hi).then_some((lo, hi))
}

pub(crate) fn attention(
    params: &AttnParams,
    args: &[Arg<'_>],
    node: &Node,
    out: &mut Data,
) -> Res<()> {
    let (q, k, v) = (&args[0], &args[1], &args[2]);
    let qs = q.f32().map_err(|e| e.to_string())?;
    let q_pos = args[3].i32().map_err(|e| e.to_string())?;
    let n_kv = args[4].i32().map_err(|e| e.to_string())?[args[4].layout().offset];
    let mask = match args.get(5) {
        Some(m) => Some(m.f32().map_err(|e| e.to_string())?),
        None => None,
    };
    let (ql, kl, vl) = (q.layout(), k.layout(), v.layout());
    let (d, n_head) = (ql.shape.ne(0), ql.shape.ne(1));
    let (n_head_kv, cap) = (kl.shape.ne(1), kl.shape.ne(2));
    let d_v = vl.shape.ne(0);
    if n_kv < 0 || (params.kv_layout == KvLayout::Linear && n_kv as usize > cap) {
        return Err(format!(
            "n_kv = {n_kv} does not fit a linear K/V of {cap} rows"
        ));
    }
    let group = n_head / n_head_kv;
    let out = &mut out.as_f32_mut().map_err(|e| e.to_string())?[..node.shape().n_elems()];
    out.par_chunks_mut(d_v)
        .enumerate()
        .try_for_each(|(r, o)| -> Res<()> {
            let (h, t) = (r % n_head, r / n_head);
            let g = h / group;
            let qr = &qs[ql.index([0, h, t, 0])..ql.index([0, h, t, 0]) + d];
            o.fill(0.0);
            let Some((lo, hi)) =
                visible_range(params, i64::from(q_pos[t]), i64::from(n_kv), cap as i64)
            else {
                return Ok(());
            };
            let mut krow = vec![0.0f32; d];
            let mut vrow = vec![0.0f32; d_v];
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
            for p in lo..=hi {
                let slot = match params.kv_layout {
                    KvLayout::Linear => p as usize,
                    KvLayout::Ring => (p as usize) % cap,
                };
                k.data
                    .read_f32(kl.index([0, g, slot, 0]), &mut krow)
                    .map_err(|e| e.to_string())?;
                let mut s = params.scale * dot(qr, &krow);
                if let Some(m) = mask {
                    s += m[slot + t * cap];
                }
                if s == f32::NEG_INFINITY {
                    continue;
                }
                v.data
                    .read_f32(vl.index([0, g, slot, 0]), &mut vrow)
                    .map_err(|e| e.to_string())?;
                if s > max {
                    let c = (max - s).exp();
                    sum *= c;
                    for x in o.iter_mut() {
                        *x *= c;
                    }
                    max = s;
                }
                let w = (s - max).exp();
                sum += w;
                for (x, &vv) in o.iter_mut().zip(&vrow) {
                    *x += w * vv;
                }
            }
            if sum > 0.0 {
                for x in o.iter_mut() {
                    *x /= sum;
                }
            }
            Ok(())
        })
}
