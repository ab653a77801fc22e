//! Q5_0: 32 weights in 22 bytes: `d: f16`, `qh: u32` (fifth bits), `qs: [u8; 16]`.
//! Weight `j` takes its low nibble from `qs[j]` and bit 4 from `qh` bit `j`; weight `j + 16`
//! takes the high nibble and `qh` bit `j + 16`; both are offset by −16.
//!
//! Quantization is ggml's reference rule: the element of largest magnitude `m` (the first one
//! on ties) sets `d = m / −16`, so it maps to level 0; every weight becomes
//! `min(31, trunc(x / d + 16.5))`. Each element is within `d/2` of its input, plus the f16
//! rounding of `d` over up to 16 steps.

use super::f16_at;

pub(super) fn dequantize_block(b: &[u8; 22], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let hi0 = ((qh >> j) & 1) << 4;
        let hi1 = ((qh >> (j + 16)) & 1) << 4;
        out[j] = d * (((q & 0xF) as u32 | hi0) as i32 - 16) as f32;
        out[j + 16] = d * (((q >> 4) as u32 | hi1) as i32 - 16) as f32;
    }
}

pub(super) fn quantize_block(x: &[f32; 32]) -> [u8; 22] {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // The cast truncates toward zero and saturates, as ggml's `(int8_t)` cast does in range.
    let level = |v: f32| ((v * id + 16.5) as i8).clamp(0, 31) as u8;
    let mut out = [0u8; 22];
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let (q0, q1) = (level(x[j]), level(x[j + 16]));
        out[6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
        qh |= u32::from(q0 >> 4) << j;
        qh |= u32::from(q1 >> 4) << (j + 16);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
    out
}
