//! Q8_0: 32 weights in 34 bytes: `d: f16`, `qs: [i8; 32]`; weight = `d * qs[j]`.
//!
//! Quantization is ggml's reference rule: `d = max|x| / 127`, `q = round(x / d)` (half away
//! from zero), `d` stored as f16. Hence every element is within `d/2 + 127·|d − f16(d)|`
//! ≤ `0.5625·d` of its input.

use super::f16_at;

pub(super) fn dequantize_block(b: &[u8; 34], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..]) {
        *o = d * (q as i8) as f32;
    }
}

pub(super) fn quantize_block(x: &[f32; 32]) -> [u8; 34] {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; 34];
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    for (o, &v) in out[2..].iter_mut().zip(x) {
        *o = ((v * id).round().clamp(-127.0, 127.0) as i8) as u8;
    }
    out
}
