//! Q4_K: 256 weights in 144 bytes: `d: f16`, `dmin: f16`, `scales: [u8; 12]` (eight 6-bit
//! scales and eight 6-bit mins, packed), `qs: [u8; 128]` (nibbles).
//!
//! Sub-block `j` (32 weights) decodes as `d * sc_j * q − dmin * m_j` with `q` in 0..=15. The
//! 64 weights of sub-blocks `2p` and `2p + 1` share the bytes `qs[32p..32p + 32]`: low nibbles
//! for the first, high nibbles for the second.
//!
//! Quantization fits each sub-block's (scale, min) by a few rounds of least squares over the
//! current integer assignment, then quantizes the scales and mins to 6 bits against the block's
//! largest and re-assigns every weight with the stored values. In a block whose largest weight
//! is ≥ 0 and whose step stays in f16's normal range, every weight ends up within one step of
//! the coarsest sub-block (`(max − min₀) / 15` of the 256 weights, `min₀ = min(min, 0)`) of its
//! input: the fit keeps each weight within 3/4 of a step (see `fit_scale_min`) and the 6-bit
//! scales and mins cost at most (15·max scale + max min) / 126, about 0.24 of it, since no min
//! exceeds `−min₀`. The format itself cannot keep that bound for blocks of only negative weights
//! far from zero (every min is then about `|min|`, and its 6-bit and f16 rounding alone can
//! exceed the block's small range) or for steps that underflow f16.

use super::{f16_at, scale_min_k4};

pub(super) fn dequantize_block(b: &[u8; 144], out: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    for pair in 0..4 {
        let q = &b[16 + 32 * pair..16 + 32 * (pair + 1)];
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            out[64 * pair + l] = d1 * (q[l] & 0xF) as f32 - min1;
            out[64 * pair + 32 + l] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

/// Fits `x ≈ scale * q − min` with `q` in `0..=n_max` and `min ≥ 0`; returns `(scale, min)`.
///
/// The squared error decides between candidates, but only among those that leave every weight
/// within 3/4 of a step of the plain range fit (`(max − min₀) / n_max`, `min₀ = min(min x, 0)`):
/// a least-squares fit may otherwise clip an outlying weight by more than a step, and the block
/// bound of the module doc needs the last quarter step for the 6-bit scales and mins.
pub(super) fn fit_scale_min(x: &[f32], n_max: u8) -> (f32, f32) {
    let lo = x.iter().fold(f32::INFINITY, |m, &v| m.min(v)).min(0.0);
    let hi = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return (0.0, -lo);
    }
    let n = n_max as f32;
    // (sum of squared errors, largest absolute error) of a candidate.
    let error = |scale: f32, min: f32| -> (f32, f32) {
        x.iter().fold((0.0, 0.0), |(sse, worst), &v| {
            let q = if scale > 0.0 {
                ((v + min) / scale).round().clamp(0.0, n)
            } else {
                0.0
            };
            let e = scale * q - min - v;
            (sse + e * e, worst.max(e.abs()))
        })
    };
    let max_abs_limit = 0.75 * (hi - lo) / n;
    let mut best = ((hi - lo) / n, -lo);
    let mut best_err = error(best.0, best.1).0;
    // Try a few stretched ranges, refitting (scale, min) by least squares on each assignment.
    for step in -4..=8 {
        let scale0 = (hi - lo) / (n + 0.1 * step as f32);
        let (mut scale, mut min) = (scale0, -lo);
        for _ in 0..2 {
            let (mut s_q, mut s_qq, mut s_x, mut s_qx) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for &v in x {
                let q = ((v + min) / scale).round().clamp(0.0, n) as f64;
                s_q += q;
                s_qq += q * q;
                s_x += v as f64;
                s_qx += q * v as f64;
            }
            let count = x.len() as f64;
            let det = count * s_qq - s_q * s_q;
            if det <= 0.0 {
                break;
            }
            // Least squares of v ≈ a·q + b, then min = −b clamped to ≥ 0.
            let a = (count * s_qx - s_q * s_x) / det;
            let b = (s_x - a * s_q) / count;
            if a <= 0.0 {
                break;
            }
            let b = b.min(0.0);
            scale = a as f32;
            min = -b as f32;
        }
        let (err, worst) = error(scale, min);
        if err < best_err && worst <= max_abs_limit {
            best_err = err;
            best = (scale, min);
        }
    }
    best
}

/// Packs eight 6-bit scales and mins into the 12-byte K-quant layout read by `scale_min_k4`.
pub(super) fn pack_scales_mins(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = sc[j];
            s[j + 4] = m[j];
        } else {
            s[j + 4] = (sc[j] & 0xF) | ((m[j] & 0xF) << 4);
            s[j - 4] |= (sc[j] >> 4) << 6;
            s[j] |= (m[j] >> 4) << 6;
        }
    }
    s
}

/// Quantizes the 8 (scale, min) pairs to 6 bits; returns `(d, dmin, sc, m)` with `d` and
/// `dmin` already rounded to f16 precision.
pub(super) fn quantize_scales_mins(fits: &[(f32, f32); 8]) -> (f32, f32, [u8; 8], [u8; 8]) {
    let max_scale = fits.iter().fold(0.0f32, |a, f| a.max(f.0));
    let max_min = fits.iter().fold(0.0f32, |a, f| a.max(f.1));
    let to_f16 = |v: f32| half::f16::from_f32(v).to_f32();
    let d = to_f16(max_scale / 63.0);
    let dmin = to_f16(max_min / 63.0);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for (j, &(scale, min)) in fits.iter().enumerate() {
        if d > 0.0 {
            sc[j] = (scale / d).round().clamp(0.0, 63.0) as u8;
        }
        if dmin > 0.0 {
            m[j] = (min / dmin).round().clamp(0.0, 63.0) as u8;
        }
    }
    (d, dmin, sc, m)
}

pub(super) fn quantize_block(x: &[f32; 256]) -> [u8; 144] {
    let mut fits = [(0.0f32, 0.0f32); 8];
    for (j, fit) in fits.iter_mut().enumerate() {
        *fit = fit_scale_min(&x[32 * j..32 * (j + 1)], 15);
    }
    let (d, dmin, sc, m) = quantize_scales_mins(&fits);
    let mut q = [0u8; 256];
    for j in 0..8 {
        let step = d * sc[j] as f32;
        let offset = dmin * m[j] as f32;
        for l in 32 * j..32 * (j + 1) {
            q[l] = if step > 0.0 {
                ((x[l] + offset) / step).round().clamp(0.0, 15.0) as u8
            } else {
                0
            };
        }
    }
    let mut out = [0u8; 144];
    out[0..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    out[2..4].copy_from_slice(&half::f16::from_f32(dmin).to_le_bytes());
    out[4..16].copy_from_slice(&pack_scales_mins(&sc, &m));
    for pair in 0..4 {
        for l in 0..32 {
            out[16 + 32 * pair + l] = q[64 * pair + l] | (q[64 * pair + 32 + l] << 4);
        }
    }
    out
}
