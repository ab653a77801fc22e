//! Q6_K: 256 weights in 210 bytes: `ql: [u8; 128]` (low nibbles), `qh: [u8; 64]` (high two
//! bits), `scales: [i8; 16]` (one per 16 weights), then `d: f16` last.
//!
//! Weight = `d * scales[i] * (q − 32)` with the 6-bit `q` in 0..=63. Each 128-weight half uses
//! 64 bytes of `ql` and 32 of `qh`: for `l` in 0..32, `ql[l]` holds weights `l` (low nibble) and
//! `l + 64` (high), `ql[l + 32]` weights `l + 32` and `l + 96`, and `qh[l]` their high bits in
//! bit pairs 0–1, 2–3, 4–5, 6–7.
//!
//! Quantization picks each 16-weight scale so the largest-magnitude weight maps to −32 (using
//! the asymmetric range −32..=31 in full), refines it by least squares, quantizes the scales to
//! i8 against the block's largest, and re-assigns every weight with the stored values. Every
//! weight ends up within one step of the coarsest sub-block (`max|x| / 32` of the 256 weights).

use super::f16_at;

/// One Q6_K block's integer parts: the levels `q − 32` (−32..=31) of its 256 weights in order,
/// the 16 sub-block scales and `d`, so that weight `i` = `d · scales[i / 16] · levels[i]`.
pub fn levels(b: &[u8; 210]) -> ([i8; 256], [i8; 16], f32) {
    let mut q = [0i8; 256];
    for half in 0..2 {
        let ql = &b[64 * half..64 * (half + 1)];
        let qh = &b[128 + 32 * half..128 + 32 * (half + 1)];
        let y = &mut q[128 * half..128 * (half + 1)];
        for l in 0..32 {
            let level = |low: u8, high: u8| ((low & 0xF) | ((high & 3) << 4)) as i8 - 32;
            y[l] = level(ql[l], qh[l]);
            y[l + 32] = level(ql[l + 32], qh[l] >> 2);
            y[l + 64] = level(ql[l] >> 4, qh[l] >> 4);
            y[l + 96] = level(ql[l + 32] >> 4, qh[l] >> 6);
        }
    }
    let scales = std::array::from_fn(|i| b[192 + i] as i8);
    (q, scales, f16_at(b, 208))
}

pub(super) fn dequantize_block(b: &[u8; 210], out: &mut [f32; 256]) {
    let (q, scales, d) = levels(b);
    for (i, (y, &level)) in out.iter_mut().zip(&q).enumerate() {
        *y = d * scales[i / 16] as f32 * level as f32;
    }
}

/// Rounds `v / scale` to the signed 6-bit range.
fn level(v: f32, scale: f32) -> i32 {
    if scale == 0.0 {
        0
    } else {
        ((v / scale).round() as i32).clamp(-32, 31)
    }
}

/// Chooses the (signed) scale of one 16-weight sub-block.
fn fit_scale(x: &[f32]) -> f32 {
    let extreme = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if extreme == 0.0 {
        return 0.0;
    }
    let error = |scale: f32| -> f32 {
        x.iter()
            .map(|&v| {
                let e = scale * level(v, scale) as f32 - v;
                e * e
            })
            .sum()
    };
    let mut best = -extreme / 32.0;
    let mut best_err = error(best);
    for step in -6..=6 {
        let start = -extreme / (32.0 + 0.25 * step as f32);
        // One least-squares refit of the scale on the assignment `start` gives.
        let (num, den) = x.iter().fold((0.0f64, 0.0f64), |(n, d), &v| {
            let q = level(v, start) as f64;
            (n + q * v as f64, d + q * q)
        });
        for scale in [start, if den > 0.0 { (num / den) as f32 } else { start }] {
            let err = error(scale);
            if err < best_err {
                best_err = err;
                best = scale;
            }
        }
    }
    best
}

pub(super) fn quantize_block(x: &[f32; 256]) -> [u8; 210] {
    let mut scales = [0.0f32; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        *s = fit_scale(&x[16 * i..16 * (i + 1)]);
    }
    let max_scale = scales
        .iter()
        .fold(0.0f32, |m, &s| if s.abs() > m.abs() { s } else { m });
    // All-zero input gives d = 0 and every q = 32 (value 0).
    let d = half::f16::from_f32(-max_scale / 128.0).to_f32();
    let mut sc = [0i8; 16];
    for (s, &scale) in sc.iter_mut().zip(&scales) {
        *s = if d != 0.0 {
            (scale / d).round().clamp(-128.0, 127.0) as i8
        } else {
            0
        };
    }
    let mut q = [0u8; 256];
    let mut out = [0u8; 210];
    for (i, &s) in sc.iter().enumerate() {
        let step = d * s as f32;
        for l in 16 * i..16 * (i + 1) {
            q[l] = (level(x[l], step) + 32) as u8;
        }
    }
    for half in 0..2 {
        let base = 128 * half;
        for l in 0..32 {
            let (q1, q2, q3, q4) = (
                q[base + l],
                q[base + l + 32],
                q[base + l + 64],
                q[base + l + 96],
            );
            out[64 * half + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            out[64 * half + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            out[128 + 32 * half + l] =
                (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    for (o, &s) in out[192..208].iter_mut().zip(&sc) {
        *o = s as u8;
    }
    out[208..210].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    out
}
