//! Plain float types: F32, F16, BF16 (little-endian).

pub(super) fn f32_to_f32(data: &[u8], out: &mut [f32]) {
    let (chunks, _) = data.as_chunks::<4>();
    for (c, o) in chunks.iter().zip(out) {
        *o = f32::from_le_bytes(*c);
    }
}

pub(super) fn f16_to_f32(data: &[u8], out: &mut [f32]) {
    let (chunks, _) = data.as_chunks::<2>();
    for (c, o) in chunks.iter().zip(out) {
        *o = half::f16::from_le_bytes(*c).to_f32();
    }
}

pub(super) fn bf16_to_f32(data: &[u8], out: &mut [f32]) {
    let (chunks, _) = data.as_chunks::<2>();
    for (c, o) in chunks.iter().zip(out) {
        *o = half::bf16::from_le_bytes(*c).to_f32();
    }
}
