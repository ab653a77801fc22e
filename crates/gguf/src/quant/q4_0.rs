//! Q4_0: 32 weights in 18 bytes: `d: f16`, `qs: [u8; 16]`.
//! Weight `j` is `d * ((qs[j] & 0xF) - 8)`, weight `j + 16` is `d * ((qs[j] >> 4) - 8)`.

use super::f16_at;

pub(super) fn dequantize_block(b: &[u8; 18], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        out[j] = d * ((q & 0xF) as i32 - 8) as f32;
        out[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}
