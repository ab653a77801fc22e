//! Q5_1: 32 weights in 24 bytes: `d: f16`, `m: f16`, `qh: u32`, `qs: [u8; 16]`.
//! As Q5_0 but unsigned: weight = `d * q + m`.

use super::f16_at;

pub(super) fn dequantize_block(b: &[u8; 24], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let hi0 = ((qh >> j) & 1) << 4;
        let hi1 = ((qh >> (j + 16)) & 1) << 4;
        out[j] = d * ((q & 0xF) as u32 | hi0) as f32 + m;
        out[j + 16] = d * ((q >> 4) as u32 | hi1) as f32 + m;
    }
}
