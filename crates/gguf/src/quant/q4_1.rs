//! Q4_1: 32 weights in 20 bytes: `d: f16`, `m: f16`, `qs: [u8; 16]`.
//! Weight `j` is `d * (qs[j] & 0xF) + m`, weight `j + 16` is `d * (qs[j] >> 4) + m`.

use super::f16_at;

pub(super) fn dequantize_block(b: &[u8; 20], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for j in 0..16 {
        let q = b[4 + j];
        out[j] = d * (q & 0xF) as f32 + m;
        out[j + 16] = d * (q >> 4) as f32 + m;
    }
}
