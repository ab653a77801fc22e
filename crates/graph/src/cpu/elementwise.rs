//! Element-wise ops, copies and concatenation over any strided layout.

use super::{Arg, Data};
use crate::error::Result;
use crate::graph::Node;
use crate::op::{BinaryOp, GluOp, UnaryOp};
use crate::shape::{Layout, MAX_DIMS};

/// GELU, tanh approximation (`gelu_pytorch_tanh`).
#[inline]
pub(crate) fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// SiLU.
#[inline]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Calls `f(storage index, output index)` for every element of `layout`, in output order.
fn for_each(layout: &Layout, mut f: impl FnMut(usize, usize)) {
    let d = layout.shape.dims();
    if layout.is_contiguous() {
        for i in 0..layout.shape.n_elems() {
            f(layout.offset + i, i);
        }
        return;
    }
    let mut o = 0;
    for i3 in 0..d[3] {
        for i2 in 0..d[2] {
            for i1 in 0..d[1] {
                let base = layout.index([0, i1, i2, i3]);
                for i0 in 0..d[0] {
                    f(base + i0 * layout.strides[0], o);
                    o += 1;
                }
            }
        }
    }
}

/// `x` gathered into a dense vector (borrowed when already dense at offset 0).
fn dense<'a>(arg: &'a Arg<'_>) -> Result<std::borrow::Cow<'a, [f32]>> {
    let l = arg.layout();
    let data = arg.data.to_f32()?;
    let n = l.shape.n_elems();
    if l.is_contiguous() && l.offset == 0 {
        return Ok(match data {
            std::borrow::Cow::Borrowed(v) => std::borrow::Cow::Borrowed(&v[..n]),
            std::borrow::Cow::Owned(mut v) => {
                v.truncate(n);
                std::borrow::Cow::Owned(v)
            }
        });
    }
    let mut out = vec![0.0; n];
    for_each(l, |s, o| out[o] = data[s]);
    Ok(std::borrow::Cow::Owned(out))
}

pub(crate) fn binary(
    op: BinaryOp,
    a: &Arg<'_>,
    b: &Arg<'_>,
    node: &Node,
    out: &mut Data,
) -> Result<()> {
    let av = dense(a)?;
    let bv = dense(b)?;
    let d = node.shape().dims();
    let bd = b.layout().shape.dims();
    let out = &mut out.as_f32_mut()?[..node.shape().n_elems()];
    let apply = |x: f32, y: f32| match op {
        BinaryOp::Add => x + y,
        BinaryOp::Mul => x * y,
    };
    if bd == d {
        for ((o, &x), &y) in out.iter_mut().zip(av.iter()).zip(bv.iter()) {
            *o = apply(x, y);
        }
        return Ok(());
    }
    let bstr = [1, bd[0], bd[0] * bd[1], bd[0] * bd[1] * bd[2]];
    let pick = |i: usize, k: usize| if bd[k] == 1 { 0 } else { i * bstr[k] };
    let mut o = 0;
    for i3 in 0..d[3] {
        for i2 in 0..d[2] {
            for i1 in 0..d[1] {
                let base = pick(i1, 1) + pick(i2, 2) + pick(i3, 3);
                for i0 in 0..d[0] {
                    out[o] = apply(av[o], bv[base + pick(i0, 0)]);
                    o += 1;
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn unary(op: UnaryOp, x: &Arg<'_>, out: &mut Data) -> Result<()> {
    let xv = dense(x)?;
    let out = &mut out.as_f32_mut()?[..xv.len()];
    let f = |v: f32| match op {
        UnaryOp::Scale(s) => v * s,
        UnaryOp::Gelu => gelu(v),
        UnaryOp::Silu => silu(v),
        UnaryOp::Softcap(cap) => cap * (v / cap).tanh(),
    };
    for (o, &v) in out.iter_mut().zip(xv.iter()) {
        *o = f(v);
    }
    Ok(())
}

pub(crate) fn glu(op: GluOp, gate: &Arg<'_>, up: &Arg<'_>, out: &mut Data) -> Result<()> {
    let g = dense(gate)?;
    let u = dense(up)?;
    let out = &mut out.as_f32_mut()?[..g.len()];
    for ((o, &gv), &uv) in out.iter_mut().zip(g.iter()).zip(u.iter()) {
        *o = match op {
            GluOp::GeGlu => gelu(gv),
            GluOp::SwiGlu => silu(gv),
        } * uv;
    }
    Ok(())
}

pub(crate) fn contiguous(x: &Arg<'_>, out: &mut Data) -> Result<()> {
    let xv = dense(x)?;
    out.as_f32_mut()?[..xv.len()].copy_from_slice(&xv);
    Ok(())
}

pub(crate) fn concat(
    dim: usize,
    a: &Arg<'_>,
    b: &Arg<'_>,
    node: &Node,
    out: &mut Data,
) -> Result<()> {
    let (av, bv) = (dense(a)?, dense(b)?);
    let (ad, bd) = (a.layout().shape.dims(), b.layout().shape.dims());
    let d = node.shape().dims();
    let out = &mut out.as_f32_mut()?[..node.shape().n_elems()];
    let strides = |s: [usize; MAX_DIMS]| [1, s[0], s[0] * s[1], s[0] * s[1] * s[2]];
    let (sa, sb) = (strides(ad), strides(bd));
    let mut o = 0;
    for i3 in 0..d[3] {
        for i2 in 0..d[2] {
            for i1 in 0..d[1] {
                for i0 in 0..d[0] {
                    let mut idx = [i0, i1, i2, i3];
                    out[o] = if idx[dim] < ad[dim] {
                        av[(0..MAX_DIMS).map(|k| idx[k] * sa[k]).sum::<usize>()]
                    } else {
                        idx[dim] -= ad[dim];
                        bv[(0..MAX_DIMS).map(|k| idx[k] * sb[k]).sum::<usize>()]
                    };
                    o += 1;
                }
            }
        }
    }
    Ok(())
}
