//! Q5_K: 256 weights in 176 bytes: `d: f16`, `dmin: f16`, `scales: [u8; 12]` (as Q4_K),
//! `qh: [u8; 32]` (fifth bits), `qs: [u8; 128]` (nibbles).
//! Weight = `d * sc * (nibble + 16·bit) − dmin * m`, per 32-weight sub-block.

use super::{f16_at, scale_min_k4};

pub(super) fn dequantize_block(b: &[u8; 176], out: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    for pair in 0..4 {
        let ql = &b[48 + 32 * pair..48 + 32 * (pair + 1)];
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * pair), 2u8 << (2 * pair));
        for l in 0..32 {
            let lo = (ql[l] & 0xF) + if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi = (ql[l] >> 4) + if qh[l] & u2 != 0 { 16 } else { 0 };
            out[64 * pair + l] = d1 * lo as f32 - min1;
            out[64 * pair + 32 + l] = d2 * hi as f32 - min2;
        }
    }
}
