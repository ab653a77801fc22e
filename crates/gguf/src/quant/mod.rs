//! Dequantization of ggml blocks to f32, and quantization from f32 for the types a Q4_K_M file
//! mixes (Q8_0, Q4_K, Q6_K, and Q5_0 where a row is not a multiple of 256).
//!
//! One file per block type; each states its block layout. Layouts follow ggml's
//! `ggml-common.h` exactly (Q4_K keeps `d, dmin` first, Q6_K keeps `d` last).

mod float;
mod q2_k;
mod q3_k;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;

pub use q6_k::levels as q6_k_levels;

use crate::error::ErrorKind;
use crate::GgmlType;

type Res<T> = std::result::Result<T, ErrorKind>;

/// The types [`dequantize`] converts to f32.
pub const DEQUANTIZE_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The types [`quantize`] produces.
pub const QUANTIZE_TYPES: &[GgmlType] = &[
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::Q5_0,
];

/// Reads the little-endian f16 at `bytes[i..i + 2]` as f32.
#[inline]
pub(crate) fn f16_at(bytes: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([bytes[i], bytes[i + 1]]).to_f32()
}

/// Converts `data` (whole blocks of `ty`) to f32, filling `out`, which must hold exactly the
/// number of elements `data` encodes.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Res<()> {
    let n_elems = elems_in(ty, data.len())?;
    if out.len() as u64 != n_elems {
        return Err(ErrorKind::LengthMismatch {
            what: format!("dequantize {ty}: output elements"),
            expected: n_elems,
            found: out.len() as u64,
        });
    }
    match ty {
        GgmlType::F32 => float::f32_to_f32(data, out),
        GgmlType::F16 => float::f16_to_f32(data, out),
        GgmlType::BF16 => float::bf16_to_f32(data, out),
        GgmlType::Q4_0 => for_blocks(data, out, q4_0::dequantize_block),
        GgmlType::Q4_1 => for_blocks(data, out, q4_1::dequantize_block),
        GgmlType::Q5_0 => for_blocks(data, out, q5_0::dequantize_block),
        GgmlType::Q5_1 => for_blocks(data, out, q5_1::dequantize_block),
        GgmlType::Q8_0 => for_blocks(data, out, q8_0::dequantize_block),
        GgmlType::Q2_K => for_blocks(data, out, q2_k::dequantize_block),
        GgmlType::Q3_K => for_blocks(data, out, q3_k::dequantize_block),
        GgmlType::Q4_K => for_blocks(data, out, q4_k::dequantize_block),
        GgmlType::Q5_K => for_blocks(data, out, q5_k::dequantize_block),
        GgmlType::Q6_K => for_blocks(data, out, q6_k::dequantize_block),
        _ => {
            return Err(ErrorKind::Unsupported {
                op: "dequantize",
                ty,
            })
        }
    }
    Ok(())
}

/// Like [`dequantize`], allocating the output.
pub fn dequantize_to_vec(ty: GgmlType, data: &[u8]) -> Res<Vec<f32>> {
    let n_elems = elems_in(ty, data.len())?;
    let n_elems = usize::try_from(n_elems).map_err(|_| ErrorKind::LengthMismatch {
        what: format!("dequantize {ty}: output elements"),
        expected: n_elems,
        found: usize::MAX as u64,
    })?;
    let mut out = vec![0.0; n_elems];
    dequantize(ty, data, &mut out)?;
    Ok(out)
}

/// Quantizes `src` (a whole number of blocks of `ty`) into the bytes of `ty` blocks.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Res<Vec<u8>> {
    let block = ty.block_elems() as usize;
    if !src.len().is_multiple_of(block) {
        return Err(ErrorKind::LengthMismatch {
            what: format!("quantize {ty}: input elements (a multiple of {block})"),
            expected: (src.len() / block * block) as u64,
            found: src.len() as u64,
        });
    }
    Ok(match ty {
        GgmlType::Q8_0 => quantize_blocks(src, q8_0::quantize_block),
        GgmlType::Q4_K => quantize_blocks(src, q4_k::quantize_block),
        GgmlType::Q6_K => quantize_blocks(src, q6_k::quantize_block),
        GgmlType::Q5_0 => quantize_blocks(src, q5_0::quantize_block),
        _ => return Err(ErrorKind::Unsupported { op: "quantize", ty }),
    })
}

/// Number of elements `n_bytes` of `ty` encode, or an error if it is not whole blocks.
fn elems_in(ty: GgmlType, n_bytes: usize) -> Res<u64> {
    let block_bytes = ty.block_bytes();
    let n_bytes = n_bytes as u64;
    if !n_bytes.is_multiple_of(block_bytes) {
        return Err(ErrorKind::LengthMismatch {
            what: format!("dequantize {ty}: input bytes (a multiple of {block_bytes})"),
            expected: n_bytes / block_bytes * block_bytes,
            found: n_bytes,
        });
    }
    Ok(n_bytes / block_bytes * ty.block_elems())
}

fn for_blocks<const B: usize, const E: usize>(
    data: &[u8],
    out: &mut [f32],
    f: fn(&[u8; B], &mut [f32; E]),
) {
    let (blocks, _) = data.as_chunks::<B>();
    let (outs, _) = out.as_chunks_mut::<E>();
    for (block, out) in blocks.iter().zip(outs) {
        f(block, out);
    }
}

fn quantize_blocks<const B: usize, const E: usize>(
    src: &[f32],
    f: fn(&[f32; E]) -> [u8; B],
) -> Vec<u8> {
    let (chunks, _) = src.as_chunks::<E>();
    let mut out = Vec::with_capacity(chunks.len() * B);
    for chunk in chunks {
        out.extend_from_slice(&f(chunk));
    }
    out
}

/// Unpacks the `j`-th 6-bit (scale, min) pair of a Q4_K/Q5_K block's 12 scale bytes.
#[inline]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}
