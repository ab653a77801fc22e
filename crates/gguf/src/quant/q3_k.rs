//! Q3_K: 256 weights in 110 bytes: `hmask: [u8; 32]` (third bits), `qs: [u8; 64]` (low two
//! bits), `scales: [u8; 12]` (sixteen 6-bit scales, offset by 32), `d: f16`.
//! Weight = `d * (scale − 32) * (low2 − (hmask bit set ? 0 : 4))`.

use super::f16_at;

/// Unpacks the 16 six-bit scales: low nibbles from bytes 0..8, high two bits from 8..12.
fn unpack_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0xF } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}

pub(super) fn dequantize_block(b: &[u8; 110], out: &mut [f32; 256]) {
    let hmask = &b[0..32];
    let scales = unpack_scales(&b[96..108]);
    let d = f16_at(b, 108);
    let mut is = 0;
    let mut y = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &b[32 + 32 * half..32 + 32 * (half + 1)];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                for l in 16 * part..16 * (part + 1) {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let high = if hmask[l] & m != 0 { 0 } else { 4 };
                    out[y] = dl * (low - high) as f32;
                    y += 1;
                }
            }
            m <<= 1;
        }
    }
}
