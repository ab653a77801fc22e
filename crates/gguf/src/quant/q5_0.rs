//! Q5_0: 32 weights in 22 bytes: `d: f16`, `qh: u32` (fifth bits), `qs: [u8; 16]`.
//! Weight `j` takes its low nibble from `qs[j]` and bit 4 from `qh` bit `j`; weight `j + 16`
//! takes the high nibble and `qh` bit `j + 16`; both are offset by −16.

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
