//! Q2_K: 256 weights in 84 bytes: `scales: [u8; 16]` (low nibble scale, high nibble min, per
//! 16 weights), `qs: [u8; 64]` (2-bit), `d: f16`, `dmin: f16`.
//! Weight = `d * (scale & 0xF) * q − dmin * (scale >> 4)`.

use super::f16_at;

pub(super) fn dequantize_block(b: &[u8; 84], out: &mut [f32; 256]) {
    let scales = &b[0..16];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    let mut is = 0;
    let mut y = 0;
    for half in 0..2 {
        let q = &b[16 + 32 * half..16 + 32 * (half + 1)];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0xF) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for &qb in &q[16 * part..16 * (part + 1)] {
                    out[y] = dl * ((qb >> shift) & 3) as f32 - ml;
                    y += 1;
                }
            }
        }
    }
}
